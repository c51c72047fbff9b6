{{/* Names, labels and the values-to-config mapping shared by every template. */}}

{{- define "vgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "vgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vgate
{{- end -}}

{{- define "vgate.serviceAccountName" -}}
{{- default (include "vgate.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "vgate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the public certificate (host and *.baseDomain). */}}
{{- define "vgate.publicTLSSecret" -}}
{{- default (printf "%s-tls" (include "vgate.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{/* The Secret with the certificate the gateway itself serves. */}}
{{- define "vgate.servingTLSSecret" -}}
{{- if and (eq .Values.tls.mode "reencrypt") .Values.tls.backend.secretName -}}
{{- .Values.tls.backend.secretName -}}
{{- else -}}
{{- include "vgate.publicTLSSecret" . -}}
{{- end -}}
{{- end -}}

{{/* The public hostnames: the single host and the tenants' wildcard. */}}
{{- define "vgate.hosts" -}}
{{- $hosts := list -}}
{{- if .Values.host -}}{{- $hosts = append $hosts .Values.host -}}{{- end -}}
{{- if .Values.baseDomain -}}{{- $hosts = append $hosts (printf "*.%s" .Values.baseDomain) -}}{{- end -}}
{{- toJson $hosts -}}
{{- end -}}

{{- define "vgate.backendServerName" -}}
{{- default .Values.host .Values.tls.backend.serverName -}}
{{- end -}}

{{/* Whether the SQLite lifecycle store is in use (then exactly one replica). */}}
{{- define "vgate.sqliteStore" -}}
{{- if and .Values.lifecycle.enabled (eq .Values.lifecycle.store.type "sqlite") -}}true{{- end -}}
{{- end -}}

{{/* Checks that a JSON schema cannot express with a readable message. */}}
{{- define "vgate.validate" -}}
{{- if include "vgate.sqliteStore" . -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- fail (printf "replicaCount is %d, but lifecycle.store.type sqlite allows exactly one replica: set replicaCount: 1, or lifecycle.store.type: kubernetes for several replicas" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- fail "autoscaling.enabled needs several replicas, but lifecycle.store.type sqlite allows exactly one: use lifecycle.store.type: kubernetes" -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.host) (not .Values.baseDomain) -}}
{{- fail "set host, baseDomain, or both: the gateway needs a name to be reached at" -}}
{{- end -}}
{{- if and .Values.host (not .Values.pathPrefix) (not .Values.baseDomain) -}}
{{- fail "host is set without pathPrefix or baseDomain: no tenant could be addressed" -}}
{{- end -}}
{{- if and (eq .Values.tls.source "certManager") (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.source is certManager: set tls.certManager.issuerRef.name to the issuer that signs the certificate" -}}
{{- end -}}
{{- if and .Values.ldap.enabled (not .Values.ldap.bindPasswordSecret.name) -}}
{{- fail "ldap.enabled: set ldap.bindPasswordSecret.name to the Secret that holds the bind password" -}}
{{- end -}}
{{- if and .Values.portal.enabled (or (not .Values.portal.clientSecret.name) (not .Values.portal.cookieSecret.name)) -}}
{{- fail "portal.enabled: set portal.clientSecret.name and portal.cookieSecret.name to the Secrets that hold them" -}}
{{- end -}}
{{- if and .Values.portal.enabled (not .Values.host) -}}
{{- fail "portal.enabled: set host, the name the portal is served at" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range .Values.tenants -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "tenants: %q is listed twice" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- end -}}
{{- $storage := .Values.sessions.recording.storage -}}
{{- if and (include "vgate.recording" .) (eq $storage.type "persistentVolumeClaim") (not (has "ReadWriteMany" $storage.accessModes)) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "sessions.recording.storage is a persistentVolumeClaim without ReadWriteMany, which one pod at a time can use: set replicaCount: 1, accessModes: [ReadWriteMany] (a class that supports it), or type: emptyDir" -}}
{{- end -}}
{{- if and (include "vgate.recording" .) (regexMatch "^[0-9]+(Ki|Mi|Gi|Ti)$" $storage.size) -}}
{{- $unit := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- $bytes := mul (int64 (regexFind "^[0-9]+" $storage.size)) (get $unit (regexFind "[KMGT]i$" $storage.size)) -}}
{{- if ge (int64 .Values.sessions.recording.maxDirectoryBytes) (int64 $bytes) -}}
{{- fail (printf "sessions.recording.maxDirectoryBytes (%d) must stay below sessions.recording.storage.size (%s = %d bytes): a full emptyDir evicts the pod, a full volume stops recording" (int64 .Values.sessions.recording.maxDirectoryBytes) $storage.size (int64 $bytes)) -}}
{{- end -}}
{{- end -}}
{{- if .Values.forwardGroups.mode -}}
{{- range $file, $doc := .Values.policies.inline -}}
{{- if and (kindIs "map" $doc) (eq (toString $doc.tenant) "*") (kindIs "map" $doc.forward_groups) -}}
{{- if hasKey $doc.forward_groups "mode" -}}
{{- fail (printf "forwardGroups.mode and the forward_groups.mode of policies.inline %s (tenant \"*\") both set every tenant's default: keep one" $file) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.ingress.flavour "gatewayAPI") (not .Values.ingress.gatewayRefs) -}}
{{- fail "ingress.flavour gatewayAPI: list the Gateway(s) to attach to in ingress.gatewayRefs" -}}
{{- end -}}
{{- end -}}
