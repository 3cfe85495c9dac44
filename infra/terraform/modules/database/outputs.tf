output "host" {
  description = "Host name of the server."
  value       = local.host
}

output "port" {
  description = "Its port."
  value       = tonumber(local.port)
}

output "address" {
  description = "host:port, as the edge's database_host wants it."
  value       = "${local.host}:${local.port}"
}

output "database" {
  description = "The database."
  value       = local.database
}

output "username" {
  description = "The user Glimpse connects as."
  value       = local.user
}

output "password" {
  description = "Its password."
  value       = local.password
  sensitive   = true
}

output "url" {
  description = "postgres://user:password@host:port/database?sslmode=verify-full (existing_url as given), as the workers' [database] url wants it."
  value       = local.create ? "postgres://${local.user}:${local.password}@${local.host}:${local.port}/${local.database}?sslmode=verify-full" : var.existing_url
  sensitive   = true
}

output "ca_bundle" {
  description = "The HTTPS URL where clients fetch the CA certificates that sign the server's certificate: RDS's global bundle for a created instance, existing_ca_bundle_url otherwise (null: the system's roots)."
  value       = local.create ? "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem" : var.existing_ca_bundle_url
}

output "security_group_id" {
  description = "The created instance's security group (null with existing_url)."
  value       = local.create ? aws_security_group.catalog[0].id : null
}
