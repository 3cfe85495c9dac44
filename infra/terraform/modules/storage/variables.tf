variable "bucket_name" {
  description = "Name of the bucket holding the originals (globally unique)."
  type        = string
}

variable "web_origins" {
  description = "Origins of the web page (https://photos.example.com) that PUT originals straight to the bucket through presigned URLs."
  type        = list(string)

  validation {
    condition     = alltrue([for origin in var.web_origins : can(regex("^https?://[^/]+$", origin))])
    error_message = "Each origin is scheme://host[:port], without a path or a trailing slash."
  }
}

variable "deleted_version_days" {
  description = "Days a deleted or overwritten original stays recoverable as a noncurrent version."
  type        = number
  default     = 30
}

variable "kms_key_arn" {
  description = "KMS key encrypting the bucket; one is created when null."
  type        = string
  default     = null
}

variable "access_log_bucket" {
  description = "Bucket receiving the server access logs (prefix s3/<bucket>/); no access logging when null."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Whether `terraform destroy` may delete a bucket that still holds originals. Leave false for a real library."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
  default     = {}
}
