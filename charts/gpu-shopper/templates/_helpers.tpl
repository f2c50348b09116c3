{{- define "gpu-shopper.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gpu-shopper.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gpu-shopper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gpu-shopper.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gpu-shopper.labels" -}}
app.kubernetes.io/name: {{ include "gpu-shopper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "gpu-shopper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpu-shopper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gpu-shopper.deploymentId" -}}
{{- $id := required "deploymentId is required: it names this installation on the marketplaces (for example --set deploymentId=ml-platform-eu); an upgrade from a release that left it empty sets it to \"<namespace>-<release>\", the old default (docs/upgrading.md)" .Values.deploymentId -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$" $id) -}}
{{- fail "deploymentId must be 1-40 characters of a-z, 0-9 and '-', starting and ending with a letter or digit" -}}
{{- end -}}
{{- $id -}}
{{- end -}}

{{- define "gpu-shopper.providersSecret" -}}
{{- if .Values.providers.create -}}
{{- printf "%s-providers" (include "gpu-shopper.fullname" .) -}}
{{- else -}}
{{- .Values.providers.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The SSH-key Secrets the operator owns (watched by label), and its Events. */}}
{{- define "gpu-shopper.namespacedRules" }}
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch", "create", "patch"]
  # A session's inputs and env values from ConfigMaps (read only, on demand).
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["get"]
  # An Inference session's endpoint: its Service, gateway Deployment, the gateway's
  # ServiceAccount, Role and RoleBinding, its Lease, and an optional NetworkPolicy.
  # (Granting the gateway's Role needs these rights here too: get on the session and
  # its Secrets, get and patch on its Lease, creating Events.)
  - apiGroups: [""]
    resources: ["services", "serviceaccounts"]
    verbs: ["get", "create"]
  - apiGroups: ["apps"]
    resources: ["deployments"]
    verbs: ["get", "create"]
  - apiGroups: ["rbac.authorization.k8s.io"]
    resources: ["roles", "rolebindings"]
    verbs: ["get", "create"]
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "patch"]
  - apiGroups: ["networking.k8s.io"]
    resources: ["networkpolicies"]
    verbs: ["get", "create"]
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
  - apiGroups: [""]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end }}

{{/* A hash of the marketplace credentials the pod reads: the chart's own Secret, or the existing one as the cluster holds it now. */}}
{{- define "gpu-shopper.providersChecksum" -}}
{{- if .Values.providers.create -}}
{{- .Values.providers.credentials | toJson | sha256sum | trunc 16 -}}
{{- else -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.providers.existingSecret -}}
{{- (get (default dict $secret) "data") | toJson | sha256sum | trunc 16 -}}
{{- end -}}
{{- end -}}

{{/* The leader-election Lease, as the operator names it. */}}
{{- define "gpu-shopper.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (printf "gpu-shopper-%s" (include "gpu-shopper.deploymentId" .)) -}}
{{- end -}}

{{/* The watched namespaces: watchNamespaces, plus the older single watchNamespace; empty: the whole cluster. */}}
{{- define "gpu-shopper.watchedNamespaces" -}}
{{- $all := .Values.watchNamespaces | default list -}}
{{- if .Values.watchNamespace -}}{{- $all = append $all .Values.watchNamespace -}}{{- end -}}
{{- $all | uniq | join "," -}}
{{- end -}}

{{/* The operator's image: by digest when one is given, else by tag (the chart's appVersion by default). */}}
{{- define "gpu-shopper.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}
