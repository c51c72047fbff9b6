{{/*
The gateway's config file (vgate.yaml). It holds no secret: every credential is a *_file
path to a mounted Secret. Paths are absolute, so they do not depend on the config's folder.
*/}}
{{- define "vgate.config" -}}
{{- $routing := dict -}}
{{- if .Values.baseDomain -}}{{- $_ := set $routing "base_domain" .Values.baseDomain -}}{{- end -}}
{{- $_ := set $routing "path_prefix" (.Values.pathPrefix | default nil) -}}
{{- $issuers := list -}}
{{- range $i, $iss := .Values.oidc.issuers -}}
{{- $entry := dict "issuer" $iss.issuer "audiences" $iss.audiences -}}
{{- if hasKey $iss "usernameClaim" -}}{{- $_ := set $entry "username_claim" $iss.usernameClaim -}}{{- end -}}
{{- if hasKey $iss "usernamePrefix" -}}{{- $_ := set $entry "username_prefix" $iss.usernamePrefix -}}{{- end -}}
{{- if hasKey $iss "groupsClaim" -}}{{- $_ := set $entry "groups_claim" $iss.groupsClaim -}}{{- end -}}
{{- if hasKey $iss "groupsPrefix" -}}{{- $_ := set $entry "groups_prefix" $iss.groupsPrefix -}}{{- end -}}
{{- if $iss.requiredClaims -}}{{- $_ := set $entry "required_claims" $iss.requiredClaims -}}{{- end -}}
{{- if $iss.algorithms -}}{{- $_ := set $entry "algorithms" $iss.algorithms -}}{{- end -}}
{{- if hasKey $iss "leewaySeconds" -}}{{- $_ := set $entry "leeway_seconds" $iss.leewaySeconds -}}{{- end -}}
{{- if $iss.discoveryURL -}}{{- $_ := set $entry "discovery_url" $iss.discoveryURL -}}{{- end -}}
{{- if $iss.maxTokenAgeSeconds -}}{{- $_ := set $entry "max_token_age_seconds" $iss.maxTokenAgeSeconds -}}{{- end -}}
{{- if $iss.caConfigMap -}}{{- $_ := set $entry "ca_file" (printf "/etc/vgate/oidc/%d/ca.crt" $i) -}}{{- end -}}
{{- $issuers = append $issuers $entry -}}
{{- end -}}
{{- $tenants := list -}}
{{- range .Values.tenants -}}
{{- $dir := printf "/etc/vgate/tenants/%s" .name -}}
{{- $t := dict "name" .name "upstream" .upstream -}}
{{- if eq (default "token" .auth) "token" -}}
{{- $_ := set $t "token_file" (printf "%s/token" $dir) -}}
{{- else -}}
{{- $_ := set $t "client_cert_file" (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $t "client_key_file" (printf "%s/tls.key" $dir) -}}
{{- end -}}
{{- if ne (toString (default "ca.crt" .caKey)) "-" -}}{{- $_ := set $t "ca_file" (printf "%s/ca.crt" $dir) -}}{{- end -}}
{{- if .serverName -}}{{- $_ := set $t "server_name" .serverName -}}{{- end -}}
{{- if .tokenPassthrough -}}{{- $_ := set $t "token_passthrough" true -}}{{- end -}}
{{- if .serviceAccountIssuer -}}{{- $_ := set $t "service_account_issuer" .serviceAccountIssuer -}}{{- end -}}
{{- $tenants = append $tenants $t -}}
{{- end -}}
{{- $listen := dict "host" "0.0.0.0" "port" 8443 -}}
{{- if .Values.serviceMonitor.enabled -}}
{{- /* /metrics names every tenant: its own listener, admitted only for Prometheus */ -}}
{{- $_ := set $listen "metrics_host" "0.0.0.0" -}}
{{- $_ := set $listen "metrics_port" 9090 -}}
{{- end -}}
{{- $config := dict
  "listen" $listen
  "tls" (dict "cert_file" "/etc/vgate/tls/tls.crt" "key_file" "/etc/vgate/tls/tls.key")
  "workers" (int .Values.workers)
  "routing" $routing
  "oidc" (dict "issuers" $issuers "token_cache_size" (int .Values.oidc.tokenCacheSize))
  "policies" "/etc/vgate/policies"
  "tenants" $tenants
  "upstream" (dict
      "connect_timeout_seconds" .Values.upstream.connectTimeoutSeconds
      "response_timeout_seconds" .Values.upstream.responseTimeoutSeconds
      "http2_for_watches" .Values.upstream.http2ForWatches)
  "limits" (dict
      "max_request_head_bytes" (int .Values.limits.maxRequestHeadBytes)
      "max_request_body_bytes" (int .Values.limits.maxRequestBodyBytes)
      "keepalive_timeout_seconds" .Values.limits.keepaliveTimeoutSeconds
      "shutdown_grace_seconds" .Values.shutdownGraceSeconds)
  "audit" (dict "file" .Values.audit.file)
-}}
{{- include "vgate.config.requests" (dict "root" . "config" $config) -}}
{{- include "vgate.config.sessions" (dict "root" . "config" $config) -}}
{{- include "vgate.config.ldap" (dict "root" . "config" $config) -}}
{{- include "vgate.config.portal" (dict "root" . "config" $config) -}}
{{- include "vgate.config.lifecycle" (dict "root" . "config" $config) -}}
{{- toYaml $config -}}
{{- end -}}
