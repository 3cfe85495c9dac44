variable "name" {
  description = "Name of the cluster and its key."
  type        = string
  default     = "glimpse"
}

variable "existing_url" {
  description = "Use this Qdrant instead of creating a cluster: its base URL without a port (https://qdrant.example.com); REST on 6333, gRPC on 6334."
  type        = string
  default     = null

  validation {
    condition     = var.existing_url == null || can(regex("^https?://[^/:]+$", var.existing_url))
    error_message = "existing_url is scheme://host, without a port or a path."
  }
}

variable "existing_api_key" {
  description = "The API key of existing_url's server."
  type        = string
  default     = null
  sensitive   = true
}

variable "cloud_provider" {
  description = "Where Qdrant Cloud runs the cluster: aws, gcp or azure."
  type        = string
  default     = "aws"
}

variable "cloud_region" {
  description = "The region, in the cloud provider's words (us-east-1). Put it next to the workers."
  type        = string
  default     = "us-east-1"
}

variable "package_id" {
  description = "The Qdrant Cloud booking package (size) of each node; list them with the qdrant-cloud_booking_packages data source (see the README). A million 512-d photos want about 2 GB of RAM with int8 quantisation."
  type        = string
  default     = null
}

variable "nodes" {
  description = "Nodes in the cluster."
  type        = number
  default     = 1
}
