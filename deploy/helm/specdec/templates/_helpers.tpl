{{/*
specdec.fullname: release-qualified name, truncated to 63 characters.
Usage: {{ include "specdec.fullname" . }}
*/}}
{{- define "specdec.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
specdec.labels: standard labels for one component.
Usage: {{ include "specdec.labels" (dict "root" . "component" "target") }}
*/}}
{{- define "specdec.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: specdec
{{ include "specdec.selectorLabels" . }}
{{- end -}}

{{/*
specdec.selectorLabels: the labels a Service or PDB selects one component's pods by.
Usage: {{ include "specdec.selectorLabels" (dict "root" . "component" "target") }}
*/}}
{{- define "specdec.selectorLabels" -}}
app.kubernetes.io/name: specdec
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
specdec.image: the pinned image reference.
Usage: image: {{ include "specdec.image" . }}
*/}}
{{- define "specdec.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/*
specdec.serviceHost: DNS name of a component's Service.
Usage: {{ include "specdec.serviceHost" (dict "root" . "component" "target-headless") }}
*/}}
{{- define "specdec.serviceHost" -}}
{{- printf "%s-%s.%s.svc.cluster.local" (include "specdec.fullname" .root) .component .root.Release.Namespace -}}
{{- end -}}

{{/*
specdec.tlsArgs: TLS flags of `specdec serve`, when tls.enabled.
Usage: {{- include "specdec.tlsArgs" . | nindent 12 }}
*/}}
{{- define "specdec.tlsArgs" -}}
{{- if .Values.tls.enabled }}
- --tls-cert-file=/etc/specdec/tls/tls.crt
- --tls-key-file=/etc/specdec/tls/tls.key
- --tls-ca-file=/etc/specdec/tls/ca.crt
{{- end }}
{{- end -}}

{{/*
specdec.env: environment shared by every container (tracing, caches).
Usage: {{- include "specdec.env" (dict "root" . "component" "target") | nindent 12 }}
*/}}
{{- define "specdec.env" -}}
- name: OTEL_SERVICE_NAME
  value: {{ printf "specdec-%s" .component }}
{{- with .root.Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .root.Values.tracing.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .root.Values.tracing.samplerArg | quote }}
- name: HF_HOME
  value: /models/hf
- name: HF_HUB_OFFLINE
  value: "1"
- name: TORCHINDUCTOR_CACHE_DIR
  value: {{ include "specdec.compileCacheDir" . }}/inductor
- name: TRITON_CACHE_DIR
  value: {{ include "specdec.compileCacheDir" . }}/triton
{{- end -}}

{{/*
specdec.probes: gRPC startup, readiness and liveness probes against grpc.health.v1.
Usage: {{- include "specdec.probes" (dict "port" 50052 "startup" .Values.target.startupProbe) | nindent 10 }}
*/}}
{{- define "specdec.probes" -}}
startupProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: {{ .startup.periodSeconds | default 10 }}
  failureThreshold: {{ .startup.failureThreshold | default 60 }}
readinessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  grpc:
    port: {{ .port }}
  periodSeconds: 10
  failureThreshold: 6
{{- end -}}

{{/*
specdec.compileCacheDir: where torch.compile and Triton keep compiled kernels (the compile-cache volume's mount).
*/}}
{{- define "specdec.compileCacheDir" -}}
/var/cache/specdec
{{- end -}}

{{/*
specdec.volumeMounts / specdec.volumes: models (read-only), config, the TLS / token Secrets, and the two writable
places a read-only root filesystem leaves: /tmp, and the compile cache (compiled kernels, compileCache).
Usage: {{- include "specdec.volumeMounts" . | nindent 12 }}
*/}}
{{- define "specdec.volumeMounts" -}}
- name: models
  mountPath: /models
  readOnly: true
- name: config
  mountPath: /etc/specdec/config
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: compile-cache
  mountPath: {{ include "specdec.compileCacheDir" . }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/specdec/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "specdec.volumes" -}}
- name: models
{{- if .Values.models.pvc }}
  persistentVolumeClaim:
    claimName: {{ .Values.models.pvc }}
    readOnly: true
{{- else }}
  emptyDir: {}
{{- end }}
- name: config
  configMap:
    name: {{ include "specdec.fullname" . }}-config
- name: tmp
  emptyDir: {}
- name: compile-cache
{{- if .Values.compileCache.pvc }}
  persistentVolumeClaim:
    claimName: {{ .Values.compileCache.pvc }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.compileCache.sizeLimit }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled" .Values.tls.secretName }}
{{- end }}
{{- end -}}

{{/*
specdec.draftContainer: the draft container (its own Deployment in split, a sidecar in paired).
Usage: {{- include "specdec.draftContainer" . | nindent 8 }}
*/}}
{{- define "specdec.draftContainer" -}}
- name: draft
  image: {{ include "specdec.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - serve
    - draft
    - --config=/etc/specdec/config/draft.json
    {{- include "specdec.tlsArgs" . | nindent 4 }}
  ports:
    - {name: grpc-draft, containerPort: {{ .Values.draft.port }}}
    {{- if .Values.metrics.enabled }}
    - {name: metrics-draft, containerPort: {{ .Values.draft.metricsPort }}}
    {{- end }}
  env:
    {{- include "specdec.env" (dict "root" . "component" "draft") | nindent 4 }}
    {{- with .Values.draft.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- include "specdec.probes" (dict "port" .Values.draft.port "startup" .Values.draft.startupProbe) | nindent 2 }}
  resources:
    {{- toYaml .Values.draft.resources | nindent 4 }}
  securityContext:
    {{- include "specdec.containerSecurity" . | nindent 4 }}
  volumeMounts:
    {{- include "specdec.volumeMounts" . | nindent 4 }}
{{- end -}}

{{/*
specdec.containerSecurity / specdec.podSecurity: non-root, read-only root filesystem, no privileges.
*/}}
{{- define "specdec.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "specdec.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* serve's --engine-process value: auto, on or off (a YAML on / off arrives as a boolean) */}}
{{- define "specdec.engineProcess" -}}
{{- $ep := .Values.target.engineProcess -}}
{{- if kindIs "bool" $ep -}}{{ ternary "on" "off" $ep }}{{- else -}}{{ $ep }}{{- end -}}
{{- end }}
