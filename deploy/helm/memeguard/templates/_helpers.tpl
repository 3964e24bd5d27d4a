{{/* Names and labels. */}}
{{- define "memeguard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "memeguard.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: worker, alert or review. Call with (list $ "worker"). */}}
{{- define "memeguard.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "memeguard.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{/* MEMEGUARD_* settings every process reads (consumer/settings.py KafkaSettings). */}}
{{- define "memeguard.kafkaEnv" -}}
- {name: MEMEGUARD_KAFKA_BOOTSTRAP, value: {{ .Values.kafka.bootstrap | quote }}}
- {name: MEMEGUARD_INPUT_TOPIC, value: {{ .Values.kafka.inputTopic | quote }}}
- {name: MEMEGUARD_OUTPUT_TOPIC, value: {{ .Values.kafka.outputTopic | quote }}}
- {name: MEMEGUARD_DLQ_TOPIC, value: {{ .Values.kafka.dlqTopic | quote }}}
- {name: MEMEGUARD_CONTROL_TOPIC, value: {{ .Values.kafka.controlTopic | quote }}}
- {name: MEMEGUARD_CREATE_TOPICS, value: {{ .Values.kafka.createTopics | quote }}}
- {name: MEMEGUARD_LOG_FORMAT, value: json}
{{- range $name, $value := .Values.env }}
- {name: {{ $name }}, value: {{ $value | toString | quote }}}
{{- end }}
{{- end -}}

{{/* The pod's grace period: always longer than the worker's own shutdown grace (MEMEGUARD_SHUTDOWN_GRACE_S). */}}
{{- define "memeguard.terminationGrace" -}}
{{- $grace := .grace | float64 -}}
{{- if not (gt $grace 0.0) -}}
{{- fail (printf "shutdownGraceSeconds must be > 0 (got %v)" .grace) -}}
{{- end -}}
{{- if .explicit -}}
{{- if le (.explicit | float64) $grace -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than shutdownGraceSeconds (%v): Kubernetes would kill the worker while it still finishes its in-flight batch" .explicit .grace) -}}
{{- end -}}
{{- .explicit | int -}}
{{- else -}}
{{- add (ceil $grace | int) (.margin | int) -}}
{{- end -}}
{{- end -}}

{{/* Rendering fails on values that cannot work, before anything reaches the cluster. */}}
{{- define "memeguard.validate" -}}
{{- if not (has .Values.worker.variant (list "cpu" "gpu")) -}}
{{- fail (printf "worker.variant must be cpu or gpu (got %q)" .Values.worker.variant) -}}
{{- end -}}
{{- if not (has .Values.worker.bundle.source (list "volume" "initContainer")) -}}
{{- fail (printf "worker.bundle.source must be volume or initContainer (got %q)" .Values.worker.bundle.source) -}}
{{- end -}}
{{- if and (eq .Values.worker.bundle.source "initContainer") (not .Values.worker.bundle.initContainer.image) -}}
{{- fail "worker.bundle.source=initContainer needs worker.bundle.initContainer.image (an image that holds the bundle)" -}}
{{- end -}}
{{- if .Values.keda.enabled -}}
{{- $max := .Values.keda.maxReplicaCount | int -}}
{{- $partitions := .Values.kafka.inputPartitions | int -}}
{{- if gt $max $partitions -}}
{{- fail (printf "keda.maxReplicaCount (%d) must not exceed kafka.inputPartitions (%d): a worker beyond one per partition of %s gets no partition and sits idle" $max $partitions .Values.kafka.inputTopic) -}}
{{- end -}}
{{- if or (lt (.Values.keda.minReplicaCount | int) 0) (gt (.Values.keda.minReplicaCount | int) $max) -}}
{{- fail (printf "keda.minReplicaCount (%v) must lie between 0 and keda.maxReplicaCount (%d)" .Values.keda.minReplicaCount $max) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.review.enabled (not (or .Values.review.auth.usersSecret .Values.review.auth.trustedHeader)) -}}
{{- fail "review.enabled needs review.auth.usersSecret or review.auth.trustedHeader: the page refuses to start without authentication" -}}
{{- end -}}
{{- end -}}
