{{/*
What the target cluster can take. The chart installs on Kubernetes 1.28 and newer (Chart.yaml
kubeVersion); everything it writes exists in 1.28 except the two below, which are chosen per
cluster. `helm install`/`upgrade` sees the cluster's version and served APIs; `helm template`
sees --kube-version and --api-versions (without them, helm's own default version).

  field / API                                     needs    before it
  containers[].lifecycle.preStop.sleep            1.30     exec /bin/sleep (the image's coreutils)
  admissionregistration.k8s.io/v1 VAP + binding   1.30     v1beta1, when the cluster serves it
  (all else: apps/v1, policy/v1 PDB, autoscaling/v2 HPA, networking.k8s.io/v1 Ingress and
   NetworkPolicy, coordination.k8s.io/v1 Lease, apiextensions.k8s.io/v1 CRD: 1.23 or older)
*/}}

{{/* "true" when the kubelet runs the preStop `sleep` action (PodLifecycleSleepAction: alpha in
1.29, on by default from 1.30). */}}
{{- define "vgate.hasSleepAction" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version -}}true{{- end -}}
{{- end -}}

{{/* The apiVersion of ValidatingAdmissionPolicy and its binding on this cluster: what it serves
(discovery, on a live install), else v1 from Kubernetes 1.30 (GA). Empty when the cluster has
neither: 1.28 and 1.29 serve v1beta1 only with the ValidatingAdmissionPolicy feature gate and
--runtime-config=admissionregistration.k8s.io/v1beta1=true. */}}
{{- define "vgate.admissionPolicyAPIVersion" -}}
{{- $group := "admissionregistration.k8s.io" -}}
{{- if .Capabilities.APIVersions.Has (printf "%s/v1/ValidatingAdmissionPolicy" $group) -}}
{{- printf "%s/v1" $group -}}
{{- else if .Capabilities.APIVersions.Has (printf "%s/v1beta1/ValidatingAdmissionPolicy" $group) -}}
{{- printf "%s/v1beta1" $group -}}
{{- else if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version -}}
{{- printf "%s/v1" $group -}}
{{- end -}}
{{- end -}}
