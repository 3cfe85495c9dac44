variable "name" {
  description = "Name of the instance and its companions."
  type        = string
  default     = "glimpse"
}

variable "existing_url" {
  description = "Use this Postgres instead of creating one: postgres://user:password@host:port/database. TLS is required of it all the same."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.existing_url == null || can(regex("^postgres(ql)?://[^:/@]+:[^@]+@[^:/@]+(:[0-9]+)?/[^/?]+", var.existing_url))
    error_message = "existing_url is postgres://user:password@host[:port]/database."
  }
}

variable "existing_ca_bundle_url" {
  description = "With existing_url: an HTTPS URL of the PEM certificates that sign its server certificate, when the system's roots do not (a provider's CA bundle). Null trusts the system's roots."
  type        = string
  default     = null

  validation {
    condition     = var.existing_ca_bundle_url == null || can(regex("^https://", var.existing_ca_bundle_url))
    error_message = "existing_ca_bundle_url is an https:// URL."
  }
}

variable "vpc_id" {
  description = "VPC of a created instance (unused with existing_url)."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Private subnets of a created instance, in at least two availability zones."
  type        = list(string)
  default     = []
}

variable "client_security_group_ids" {
  description = "Security groups that may connect (the workers', the edge cluster's nodes)."
  type        = list(string)
  default     = []
}

variable "client_cidr_blocks" {
  description = "Networks that may connect, for clients outside the VPC's security groups."
  type        = list(string)
  default     = []
}

variable "database_name" {
  description = "The database Glimpse uses."
  type        = string
  default     = "glimpse"
}

variable "username" {
  description = "The owner of the database."
  type        = string
  default     = "glimpse"
}

variable "instance_class" {
  description = "Instance class (db.t4g.micro holds a few hundred thousand photos' catalog)."
  type        = string
  default     = "db.t4g.micro"
}

variable "engine_version" {
  description = "Postgres major version."
  type        = string
  default     = "16"
}

variable "allocated_storage_gb" {
  description = "Storage at creation, in GB; it grows by itself up to max_allocated_storage_gb."
  type        = number
  default     = 20
}

variable "max_allocated_storage_gb" {
  description = "Largest the storage may grow to, in GB."
  type        = number
  default     = 200
}

variable "backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery); at least 1."
  type        = number
  default     = 14

  validation {
    condition     = var.backup_retention_days >= 1
    error_message = "Backups stay on: at least 1 day."
  }
}

variable "multi_az" {
  description = "A standby in another availability zone."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key encrypting storage, backups and Performance Insights; AWS's RDS key when null."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Refuse to delete the instance (turn off on purpose before destroying)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
  default     = {}
}
