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

{{/*
impersonation, token_review and rate_limits: always rendered (their defaults are vgate's own;
rate limits with no limit set add no step to the request path).
*/}}
{{- define "vgate.config.requests" -}}
{{- $v := .root.Values -}}
{{- $_ := set .config "impersonation" (dict
  "max_header_bytes" (int64 $v.impersonation.maxHeaderBytes)
  "max_groups" (int64 $v.impersonation.maxGroups)) -}}
{{- $_ := set .config "token_review" (dict
  "cache_seconds" $v.tokenReview.cacheSeconds
  "negative_cache_seconds" $v.tokenReview.negativeCacheSeconds
  "cache_size" (int64 $v.tokenReview.cacheSize)
  "timeout_seconds" $v.tokenReview.timeoutSeconds
  "issuer_cache_seconds" $v.tokenReview.issuerCacheSeconds) -}}
{{- $r := $v.rateLimits -}}
{{- $roles := dict -}}
{{- range $role, $limit := $r.roles -}}
{{- $_ := set $roles $role (include "vgate.limit" $limit | fromJson) -}}
{{- end -}}
{{- $tenants := dict -}}
{{- range $tenant, $t := $r.tenants -}}
{{- $o := dict -}}
{{- if $t.tenant -}}{{- $_ := set $o "tenant" (include "vgate.limit" $t.tenant | fromJson) -}}{{- end -}}
{{- if $t.user -}}{{- $_ := set $o "user" (include "vgate.limit" $t.user | fromJson) -}}{{- end -}}
{{- if $t.roles -}}
{{- $tr := dict -}}
{{- range $role, $limit := $t.roles -}}
{{- $_ := set $tr $role (include "vgate.limit" $limit | fromJson) -}}
{{- end -}}
{{- $_ := set $o "roles" $tr -}}
{{- end -}}
{{- $_ := set $tenants $tenant $o -}}
{{- end -}}
{{- $_ := set .config "rate_limits" (dict
  "global" (include "vgate.limit" $r.global | fromJson)
  "tenant" (include "vgate.limit" $r.tenant | fromJson)
  "user" (include "vgate.limit" $r.user | fromJson)
  "roles" $roles
  "tenants" $tenants
  "idle_seconds" $r.idleSeconds
  "max_keys" (int64 $r.maxKeys)) -}}
{{- end -}}

{{/* One limit in vgate's spelling, as JSON: {requests_per_second, burst, concurrent_streams}. */}}
{{- define "vgate.limit" -}}
{{- $out := dict -}}
{{- if hasKey . "requestsPerSecond" -}}{{- $_ := set $out "requests_per_second" .requestsPerSecond -}}{{- end -}}
{{- if hasKey . "burst" -}}{{- $_ := set $out "burst" (int64 .burst) -}}{{- end -}}
{{- if hasKey . "concurrentStreams" -}}{{- $_ := set $out "concurrent_streams" (int64 .concurrentStreams) -}}{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* sessions: the bridge, and recording into the sessions volume (vgate.recording). */}}
{{- define "vgate.config.sessions" -}}
{{- $v := .root.Values.sessions -}}
{{- $rec := $v.recording -}}
{{- $_ := set .config "sessions" (dict
  "bridge" $v.bridge
  "recording" (dict
    "mode" (include "vgate.recordingMode" $rec.mode)
    "stdin" $rec.stdin
    "directory" "/var/lib/vgate-sessions"
    "tenants" (include "vgate.recordingRules" $rec.tenants | fromJson)
    "roles" (include "vgate.recordingRules" $rec.roles | fromJson)
    "max_session_bytes" (int64 $rec.maxSessionBytes)
    "max_directory_bytes" (int64 $rec.maxDirectoryBytes)
    "max_age_days" $rec.maxAgeDays
    "min_free_bytes" (int64 $rec.minFreeBytes))) -}}
{{- end -}}

{{/* name -> {mode, stdin} as JSON, the mode always a string (YAML reads a bare off as false). */}}
{{- define "vgate.recordingRules" -}}
{{- $out := dict -}}
{{- range $name, $rule := . -}}
{{- $r := dict -}}
{{- if hasKey $rule "mode" -}}{{- $_ := set $r "mode" (include "vgate.recordingMode" $rule.mode) -}}{{- end -}}
{{- if hasKey $rule "stdin" -}}{{- $_ := set $r "stdin" $rule.stdin -}}{{- end -}}
{{- $_ := set $out $name $r -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* A recording mode as vgate reads it: a bare YAML off (false) is "off". */}}
{{- define "vgate.recordingMode" -}}
{{- if eq (toString .) "false" -}}off{{- else -}}{{ . }}{{- end -}}
{{- end -}}

{{/* "true" when some session may be recorded: the sessions volume is mounted then. */}}
{{- define "vgate.recording" -}}
{{- $rec := .Values.sessions.recording -}}
{{- $on := ne (include "vgate.recordingMode" $rec.mode) "off" -}}
{{- range $rule := concat (values $rec.tenants) (values $rec.roles) -}}
{{- if and (hasKey $rule "mode") (ne (include "vgate.recordingMode" $rule.mode) "off") -}}{{- $on = true -}}{{- end -}}
{{- end -}}
{{- if $on -}}true{{- end -}}
{{- end -}}

{{/* "true" when forwardGroups sets a default for every tenant (the chart's policy file). */}}
{{- define "vgate.forwardGroups" -}}
{{- $f := .Values.forwardGroups -}}
{{- if or $f.mode $f.names $f.match -}}true{{- end -}}
{{- end -}}

{{/* The policy file forwardGroups renders: `tenant: "*"`, no roles, the forward_groups. */}}
{{- define "vgate.forwardGroupsPolicy" -}}
{{- $f := .Values.forwardGroups -}}
{{- $fg := dict -}}
{{- if $f.mode -}}{{- $_ := set $fg "mode" $f.mode -}}{{- end -}}
{{- if $f.names -}}{{- $_ := set $fg "names" $f.names -}}{{- end -}}
{{- if $f.match -}}{{- $_ := set $fg "match" $f.match -}}{{- end -}}
{{- toYaml (dict "tenant" "*" "roles" (dict) "forward_groups" $fg) -}}
{{- end -}}
