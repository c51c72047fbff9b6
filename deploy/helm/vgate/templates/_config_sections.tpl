{{/*
The ldap, portal and lifecycle sections of vgate.yaml. Each takes (dict "root" $ "config" $cfg)
and adds its section to $cfg when enabled. Secrets appear only as *_file paths.
*/}}

{{- define "vgate.config.ldap" -}}
{{- $v := .root.Values.ldap -}}
{{- if $v.enabled -}}
{{- $s := dict
  "urls" $v.urls
  "tls" $v.tls
  "bind_dn" $v.bindDN
  "bind_password_file" "/etc/vgate/ldap/bind-password"
  "user_base_dn" $v.userBaseDN
  "user_attribute" $v.userAttribute
  "user_claim" $v.userClaim
  "group_base_dn" $v.groupBaseDN
  "flush_file" "/run/vgate/directory.flush"
-}}
{{- if $v.caConfigMap -}}{{- $_ := set $s "ca_file" "/etc/vgate/ldap-ca/ca.crt" -}}{{- end -}}
{{- $_ := set .config "ldap" (merge $s (deepCopy ($v.extra | default dict))) -}}
{{- end -}}
{{- end -}}

{{- define "vgate.config.portal" -}}
{{- $v := .root.Values.portal -}}
{{- if $v.enabled -}}
{{- $s := dict
  "issuer" $v.issuer
  "client_id" $v.clientID
  "cli_client_id" $v.cliClientID
  "client_secret_file" "/etc/vgate/portal/client-secret"
  "cookie_secret_file" "/etc/vgate/portal/cookie-secret"
  "public_url" (printf "https://%s" .root.Values.host)
-}}
{{- if $v.caConfigMap -}}{{- $_ := set $s "ca_file" "/etc/vgate/portal-ca/ca.crt" -}}{{- end -}}
{{- $_ := set .config "portal" (merge $s (deepCopy ($v.extra | default dict))) -}}
{{- end -}}
{{- end -}}

{{- define "vgate.config.lifecycle" -}}
{{- $v := .root.Values.lifecycle -}}
{{- if $v.enabled -}}
{{- $s := dict -}}
{{- if eq $v.store.type "sqlite" -}}
{{- $_ := set $s "store" (dict "type" "sqlite" "path" "/var/lib/vgate/tenants.db") -}}
{{- else -}}
{{- $_ := set $s "store" (dict "type" "kubernetes" "namespace" .root.Release.Namespace
      "lease_name" (printf "%s-lifecycle" (include "vgate.fullname" .root))) -}}
{{- end -}}
{{- $_ := set .config "lifecycle" (merge $s (deepCopy ($v.extra | default dict))) -}}
{{- end -}}
{{- end -}}
