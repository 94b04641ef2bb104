{{/* Chart name, overridable. */}}
{{- define "pinserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name: the release name when it already contains the chart name. */}}
{{- define "pinserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pinserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "pinserve.labels" -}}
helm.sh/chart: {{ include "pinserve.chart" . }}
app.kubernetes.io/name: {{ include "pinserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pinserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component (operator or agent): pass (dict "ctx" $ "component" "operator"). */}}
{{- define "pinserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pinserve.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pinserve.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "pinserve.agentImage" -}}
{{- $repo := default .Values.operator.image.repository .Values.agent.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.operator.image.tag) .Values.agent.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "pinserve.benchImage" -}}
{{- printf "%s:%s" .Values.bench.image.repository (default .Chart.AppVersion .Values.bench.image.tag) -}}
{{- end -}}

{{- define "pinserve.operatorServiceAccountName" -}}
{{- if .Values.serviceAccount.operator.create -}}
{{- default (printf "%s-operator" (include "pinserve.fullname" .)) .Values.serviceAccount.operator.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.operator.name -}}
{{- end -}}
{{- end -}}

{{- define "pinserve.agentServiceAccountName" -}}
{{- if .Values.serviceAccount.agent.create -}}
{{- default (printf "%s-agent" (include "pinserve.fullname" .)) .Values.serviceAccount.agent.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.agent.name -}}
{{- end -}}
{{- end -}}

{{/* Container resources with requests == limits (Guaranteed QoS), or fail: pass (list "name" .resources). */}}
{{- define "pinserve.guaranteedResources" -}}
{{- $name := index . 0 -}}
{{- $res := index . 1 -}}
{{- if ne (toYaml $res.requests) (toYaml $res.limits) -}}
{{- fail (printf "%s.resources: requests must equal limits (Guaranteed QoS), got requests=%s limits=%s" $name (toJson $res.requests) (toJson $res.limits)) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* KUBERNETES_SERVICE_HOST/PORT when apiServer.host is set: the API server without its Service. */}}
{{- define "pinserve.apiServerEnv" -}}
{{- if .Values.apiServer.host -}}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ default "443" .Values.apiServer.port | toString | quote }}
{{- end -}}
{{- end -}}

{{/* The kopf peering object (ClusterKopfPeering, or a KopfPeering per watched namespace) of this release. */}}
{{- define "pinserve.peeringName" -}}
{{- include "pinserve.fullname" . -}}
{{- end -}}

{{/* The metrics bind address: the value, else 0.0.0.0, or 127.0.0.1 on the host network. */}}
{{- define "pinserve.metricsHost" -}}
{{- if .Values.operator.metrics.host -}}
{{- .Values.operator.metrics.host -}}
{{- else if .Values.operator.hostNetwork -}}
127.0.0.1
{{- else -}}
0.0.0.0
{{- end -}}
{{- end -}}
