output "worker_url" {
  description = "The internal API behind the load balancer (the edge's worker_url and rerank_url); null without load_balancer."
  value       = var.load_balancer ? "http://${aws_lb.internal_api[0].dns_name}:${var.port}" : null
}

output "security_group_id" {
  description = "The workers' security group (let it reach Postgres)."
  value       = aws_security_group.worker.id
}

output "autoscaling_group_name" {
  description = "The pool's autoscaling group."
  value       = aws_autoscaling_group.pool.name
}

output "pending_work_metric" {
  description = "The CloudWatch metric the pool scales on (namespace/name/dimension); null without scaling."
  value       = local.scaling ? "${local.metric_namespace}/PendingWork/Pool=${var.name}" : null
}

output "worker_settings" {
  description = "The settings file each worker runs with (secrets excluded)."
  value       = local.worker_toml
}
