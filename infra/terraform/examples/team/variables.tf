variable "name" {
  description = "Name of this Glimpse (prefix of everything created)."
  type        = string
  default     = "glimpse"
}

variable "region" {
  description = "AWS region of the bucket, the database and the workers."
  type        = string
  default     = "us-east-1"
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (two availability zones at least) with a way out to the internet (NAT) for the model download."
  type        = list(string)
}

variable "edge_security_group_ids" {
  description = "Security groups of the Kubernetes nodes running the edge (they reach Postgres and the worker pool)."
  type        = list(string)
}

variable "kubeconfig" {
  description = "Kubeconfig of the cluster with SpinKube."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Its context; the current one when null."
  type        = string
  default     = null
}

variable "hostname" {
  description = "Public host name of the photo site (DNS pointing at the cluster's ingress)."
  type        = string
}

variable "image" {
  description = "The Spin app pushed to a registry (`spin registry push` from the repository root)."
  type        = string
}

variable "gpu_image_id" {
  description = "GPU machine image with the NVIDIA driver, AWS CLI and curl (AWS Deep Learning Base GPU AMI)."
  type        = string
}


variable "cuda_release_url" {
  description = "HTTPS URL of a .tar.gz with `glimpse` built --features cuda."
  type        = string
}

variable "cuda_release_sha256" {
  description = "Its SHA-256."
  type        = string
}



variable "qdrant_package_id" {
  description = "Qdrant Cloud package of the cluster (see the qdrant module's README); ignored with qdrant_url."
  type        = string
  default     = null
}

variable "qdrant_url" {
  description = "An existing Qdrant (https://host, no port) instead of a Qdrant Cloud cluster."
  type        = string
  default     = null
}

variable "qdrant_api_key" {
  description = "Its API key."
  type        = string
  default     = null
  sensitive   = true
}

variable "max_workers" {
  description = "Most GPU workers; one always runs."
  type        = number
  default     = 4
}
