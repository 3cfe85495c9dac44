variable "name" {
  description = "Name of the pool and its companions."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the workers."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets the workers start in (with a route to the internet or VPC endpoints for S3, Secrets Manager and the model download)."
  type        = list(string)
}

variable "image_id" {
  description = "The machine image: with the NVIDIA driver for a CUDA release (e.g. AWS's Deep Learning Base OSS Nvidia Driver GPU AMI), with the AWS CLI and curl."
  type        = string
}

variable "instance_type" {
  description = "Instance type (g5.xlarge: one A10G; t3.small for a CPU worker answering query text)."
  type        = string
  default     = "g5.xlarge"
}

variable "volume_gb" {
  description = "Root volume size in GB (the image, the model cache)."
  type        = number
  default     = 100
}

variable "release_url" {
  description = "HTTPS URL of a .tar.gz holding the `glimpse` binary at its top level (built with --features cuda for GPUs)."
  type        = string

  validation {
    condition     = startswith(var.release_url, "https://")
    error_message = "release_url must be an https:// URL."
  }
}

variable "release_sha256" {
  description = "SHA-256 of that archive: a worker refuses to start another binary."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.release_sha256))
    error_message = "release_sha256 is 64 lowercase hex digits."
  }
}

variable "model" {
  description = "The model every worker of the pool loads (a Hub repository id, optionally @revision); the edge and the workers must agree on it."
  type        = string
  default     = "openai/clip-vit-base-patch32"
}

variable "min_size" {
  description = "Fewest workers: 0 lets the pool sleep while there is nothing to do."
  type        = number
  default     = 0
}

variable "max_size" {
  description = "Most workers."
  type        = number
  default     = 1

  validation {
    condition     = var.max_size >= 1
    error_message = "max_size is at least 1."
  }
}

variable "reranker_model" {
  description = "The vision-language reranker the workers serve at /v1/rerank (a Qwen2-VL Hub repository id such as Qwen/Qwen2-VL-2B-Instruct, optionally @revision); null keeps retrieval order. Needs consume_jobs (it reads the photos from the bucket)."
  type        = string
  default     = null
}

variable "reranker_max_candidates" {
  description = "The most results the reranker looks at per search; the rest keep retrieval order."
  type        = number
  default     = 10
}

variable "reranker_image_tokens" {
  description = "Pixels per photo for the reranker, in 28 x 28 tokens (144: a 336-pixel square)."
  type        = number
  default     = 144
}

variable "reranker_learn_every_clicks" {
  description = "With reranker_model: the workers train the reranker's LoRA adapters from the clicks in the catalog, a run after this many new clicks (one at a time across the pool); null: they only follow the adapter activated in the catalog."
  type        = number
  default     = 100

  validation {
    condition     = var.reranker_learn_every_clicks == null || try(var.reranker_learn_every_clicks >= 1, false)
    error_message = "reranker_learn_every_clicks must be at least 1, or null to train no adapters."
  }
}

variable "consume_jobs" {
  description = "Whether the workers index uploads (the feature-job consumer, with the database, bucket and index). A worker that only answers query text for the edge sets this false."
  type        = bool
  default     = true
}

variable "scale_on_pending_work" {
  description = "Scale between min_size and max_size on the work waiting at the edge (needs status_url and api_token). With false the pool stays at min_size."
  type        = bool
  default     = true
}

variable "status_url" {
  description = "The edge's GET /api/status, read once a minute for the pending work (https://photos.example.com/api/status)."
  type        = string
  default     = null
}

variable "api_token" {
  description = "The edge's API token (to read the status when reads are private)."
  type        = string
  default     = null
  sensitive   = true
}

variable "pending_per_worker" {
  description = "Pending photos each worker beyond the first is added for (a GPU worker indexes 100+ photos a second)."
  type        = number
  default     = 20000
}

variable "idle_minutes" {
  description = "Minutes the pending work must stay at 0 before the pool goes back to min_size."
  type        = number
  default     = 15
}

variable "port" {
  description = "Port of the workers' internal API."
  type        = number
  default     = 8090
}

variable "load_balancer" {
  description = "Put an internal network load balancer in front of the internal API (the edge's worker_url). Not needed by a pool the edge never calls."
  type        = bool
  default     = true
}

variable "client_security_group_ids" {
  description = "Security groups that may call the internal API (the edge cluster's nodes)."
  type        = list(string)
  default     = []
}

variable "client_cidr_blocks" {
  description = "Networks that may call the internal API (the edge, the operator's network)."
  type        = list(string)
  default     = []
}

variable "worker_token" {
  description = "The pool's internal bearer token, shared with the edge (at least 16 characters)."
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.worker_token) >= 16
    error_message = "worker_token is at least 16 characters."
  }
}

variable "batch" {
  description = "Jobs a worker claims per round."
  type        = number
  default     = 32
}

variable "decode_memory_mb" {
  description = "Memory image decoding may use at once, in MB."
  type        = number
  default     = 4096
}

variable "idle_poll_ms" {
  description = "How often an idle worker looks for jobs, in milliseconds."
  type        = number
  default     = 1000
}

variable "lease_seconds" {
  description = "How long a claimed job is held before another worker may take it (a worker stopped mid-batch loses nothing: its jobs come back after this)."
  type        = number
  default     = 300
}

variable "database_url" {
  description = "postgres://user:password@host:port/database (the database module's url); with consume_jobs."
  type        = string
  default     = null
  sensitive   = true
}

variable "database_ca_bundle_url" {
  description = "HTTPS URL of the PEM certificates that sign the database's certificate (the database module's ca_bundle); fetched at boot and named as sslrootcert in the URL. Null trusts the system's roots."
  type        = string
  default     = null

  validation {
    condition     = var.database_ca_bundle_url == null || can(regex("^https://", var.database_ca_bundle_url))
    error_message = "database_ca_bundle_url is an https:// URL."
  }
}

variable "database_connections" {
  description = "Pooled database connections per worker."
  type        = number
  default     = 8
}

variable "s3_bucket" {
  description = "The bucket of originals; with consume_jobs."
  type        = string
  default     = null
}

variable "s3_region" {
  description = "Its region."
  type        = string
  default     = null
}

variable "s3_access_key_id" {
  description = "The workers' access key id (the storage module's worker_access_key_id)."
  type        = string
  default     = null
}

variable "s3_secret_access_key" {
  description = "Its secret."
  type        = string
  default     = null
  sensitive   = true
}

variable "qdrant_url" {
  description = "Qdrant's gRPC URL (the qdrant module's grpc_url); with consume_jobs."
  type        = string
  default     = null
}

variable "qdrant_api_key" {
  description = "Qdrant's API key."
  type        = string
  default     = null
  sensitive   = true
}

variable "qdrant_collection_prefix" {
  description = "Collection names start with this; the edge's qdrant_collection_prefix must be the same."
  type        = string
  default     = "glimpse"
}

variable "kms_key_arn" {
  description = "KMS key of the secrets, the volumes and the scaler's logs; one is created when null."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
  default     = {}
}
