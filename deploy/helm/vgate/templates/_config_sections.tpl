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
  "session_store_file" "/tmp/vgate-portal-sessions.db"
-}}
{{- if $v.caConfigMap -}}{{- $_ := set $s "ca_file" "/etc/vgate/portal-ca/ca.crt" -}}{{- end -}}
{{- $_ := set .config "portal" (merge $s (deepCopy ($v.extra | default dict))) -}}
{{- end -}}
{{- end -}}

{{- define "vgate.config.lifecycle" -}}
{{- $v := .root.Values.lifecycle -}}
{{- if $v.enabled -}}
{{- $helm := dict
  "chart" $v.vcluster.chart
  "repo" $v.vcluster.repo
  "chart_version" $v.vcluster.version
  "values_file" "/etc/vgate/vcluster/values.yaml"
  "namespace_prefix" $v.namespacePrefix
  "pod_security" $v.podSecurity
  "gateway_namespace" .root.Release.Namespace
  "manager_cluster_role" (printf "%s-tenant-manager" (include "vgate.fullname" .root))
  "manager_service_account" (include "vgate.serviceAccountName" .root)
-}}
{{- $s := dict
  "provisioner" "helm"
  "helm" $helm
  "credentials_dir" "/var/lib/vgate/credentials"
  "platform_admin_groups" $v.platformAdminGroups
  "platform_admin_users" $v.platformAdminUsers
  "auto_wake" $v.autoWake
-}}
{{- if .root.Values.host -}}{{- $_ := set $s "public_url" (printf "https://%s" .root.Values.host) -}}{{- end -}}
{{- if eq $v.store.type "sqlite" -}}
{{- $_ := set $s "store" "/var/lib/vgate/tenants.db" -}}
{{- else -}}
{{- $_ := set $s "store_backend" "kubernetes" -}}
{{- $_ := set $s "store_namespace" .root.Release.Namespace -}}
{{- $_ := set $s "lease_name" (printf "%s-lifecycle" (include "vgate.fullname" .root)) -}}
{{- end -}}
{{- $_ := set .config "lifecycle" (merge $s (deepCopy ($v.extra | default dict))) -}}
{{- end -}}
{{- end -}}
