variable "name" {
  description = "Name of the SpinApp and its secret."
  type        = string
  default     = "glimpse"
}

variable "namespace" {
  description = "Kubernetes namespace (created elsewhere) of the app; not `default`."
  type        = string
  default     = "glimpse"
}

variable "image" {
  description = "The Spin app as an OCI artifact (`spin registry push ghcr.io/you/glimpse:0.1.0` from the repository root)."
  type        = string
}

variable "image_pull_secret" {
  description = "Name of a kubernetes.io/dockerconfigjson secret for a private registry; none when null."
  type        = string
  default     = null
}

variable "executor" {
  description = "The SpinAppExecutor SpinKube runs the app with."
  type        = string
  default     = "containerd-shim-spin"
}

variable "replicas" {
  description = "Replicas of the app (each instantiates components per request)."
  type        = number
  default     = 2
}

variable "hostname" {
  description = "Public host name of the app (photos.example.com): an Ingress routes it to the app with TLS from cert-manager. No Ingress when null."
  type        = string
  default     = null
}

variable "ingress_class" {
  description = "Ingress class of the Ingress."
  type        = string
  default     = "nginx"
}

variable "cluster_issuer" {
  description = "cert-manager ClusterIssuer that signs the Ingress's certificate."
  type        = string
  default     = "letsencrypt"
}

variable "max_body_mb" {
  description = "Largest request body the Ingress passes (uploads in the body go up to max_upload_mb)."
  type        = number
  default     = 40
}

# The app's variables (spin.toml [variables]): everything the manifest declares, nothing more.

variable "api_token" {
  description = "The public API's bearer token (writes; reads too with protect_reads)."
  type        = string
  sensitive   = true
}

variable "protect_reads" {
  description = "Whether reads need the API token too."
  type        = bool
  default     = false
}

variable "max_upload_mb" {
  description = "Uploads larger than this (MB) go straight to storage through POST /api/uploads."
  type        = number
  default     = 32
}

variable "max_staged_upload_mb" {
  description = "The largest original taken straight to storage, in MB."
  type        = number
  default     = 2048
}

variable "database_host" {
  description = "Postgres as host:port (the database module's address)."
  type        = string
}

variable "database_name" {
  description = "The database."
  type        = string
}

variable "database_user" {
  description = "The user."
  type        = string
}

variable "database_sslmode" {
  description = "require: TLS, the server verified by Spin's outbound Postgres against the runtime's trust store (give it the database's CA); disable: no TLS, only for a database on a network you trust."
  type        = string
  default     = "require"

  validation {
    condition     = contains(["require", "disable"], var.database_sslmode)
    error_message = "database_sslmode is require or disable."
  }
}

variable "database_password" {
  description = "Its password."
  type        = string
  sensitive   = true
}

variable "s3_endpoint" {
  description = "The bucket's S3 endpoint, scheme://host[:port] (path-style addressing)."
  type        = string
}

variable "s3_bucket" {
  description = "The bucket of originals."
  type        = string
}

variable "s3_region" {
  description = "Its region."
  type        = string
}

variable "s3_access_key_id" {
  description = "The edge's access key id (the storage module's edge_access_key_id)."
  type        = string
  sensitive   = true
}

variable "s3_secret_access_key" {
  description = "Its secret."
  type        = string
  sensitive   = true
}

variable "qdrant_url" {
  description = "Qdrant's REST API, scheme://host:port (the qdrant module's rest_url)."
  type        = string
}

variable "qdrant_api_key" {
  description = "Qdrant's API key."
  type        = string
  sensitive   = true
}

variable "qdrant_collection_prefix" {
  description = "Collection names start with this; the workers' must be the same."
  type        = string
  default     = "glimpse"
}

variable "worker_url" {
  description = "The internal API that embeds query text (a worker pool's worker_url; one that never sleeps answers searches while the GPU pool is at 0)."
  type        = string
}

variable "rerank_url" {
  description = "The reranker's internal API (the pool's unless set apart)."
  type        = string
}

variable "worker_token" {
  description = "The pool's internal bearer token."
  type        = string
  sensitive   = true
}

variable "rerank_budget_ms" {
  description = "How long a search waits for the reranker before keeping retrieval order."
  type        = number
  default     = 300
}
