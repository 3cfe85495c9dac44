output "bucket" {
  description = "The bucket's name."
  value       = aws_s3_bucket.originals.id
}

output "region" {
  description = "The bucket's region."
  value       = aws_s3_bucket.originals.region
}

output "endpoint" {
  description = "The bucket's regional S3 endpoint, as the edge's s3_endpoint wants it (scheme://host, path-style addressing)."
  value       = "https://s3.${aws_s3_bucket.originals.region}.amazonaws.com"
}

output "kms_key_arn" {
  description = "The key encrypting the originals."
  value       = local.kms_key_arn
}

output "edge_access_key_id" {
  description = "Access key id of the edge functions."
  value       = aws_iam_access_key.access["edge"].id
}

output "edge_secret_access_key" {
  description = "Secret access key of the edge functions."
  value       = aws_iam_access_key.access["edge"].secret
  sensitive   = true
}

output "worker_access_key_id" {
  description = "Access key id of the workers."
  value       = aws_iam_access_key.access["workers"].id
}

output "worker_secret_access_key" {
  description = "Secret access key of the workers."
  value       = aws_iam_access_key.access["workers"].secret
  sensitive   = true
}
