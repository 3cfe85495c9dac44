# A pool of `glimpse worker` instances: a launch template whose user data installs the release
# binary as a systemd service with its settings (secrets from Secrets Manager at each start), an
# autoscaling group that can sit at 0, and, when asked, an internal load balancer for the internal
# API and a scaler that wakes the pool on the work waiting at the edge and lets it sleep again.

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

locals {
  scaling = var.scale_on_pending_work && var.max_size > var.min_size
}

# ---------------------------------------------------------------------------------------------
# Encryption

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:A key policy's resource is always the key itself; it admits this account's administrators and the AWS services using the key
  #checkov:skip=CKV_AWS_111:A key policy's resource is always the key itself; it admits this account's administrators and the AWS services using the key
  #checkov:skip=CKV_AWS_356:A key policy's resource is always the key itself; it admits this account's administrators and the AWS services using the key
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  # The autoscaling group starts instances with volumes encrypted by this key.
  statement {
    sid       = "AutoscalingUsesForVolumes"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey", "kms:CreateGrant"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"]
    }
  }

  statement {
    sid       = "LogsEncrypt"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "pool" {
  count = var.kms_key_arn == null ? 1 : 0

  description             = "Glimpse worker pool ${var.name}: secrets, volumes, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

locals {
  kms_key_arn = var.kms_key_arn != null ? var.kms_key_arn : aws_kms_key.pool[0].arn
}

# ---------------------------------------------------------------------------------------------
# Settings and secrets

locals {
  # The worker verifies the database's certificate (sslmode=verify-full unless the URL says
  # otherwise); a CA bundle fetched at boot is named in the URL as sslrootcert.
  database_ca_file = "/etc/glimpse/database-ca.pem"
  database_url = (var.database_url == null || var.database_ca_bundle_url == null ? var.database_url :
  "${var.database_url}${strcontains(var.database_url, "?") ? "&" : "?"}sslrootcert=${local.database_ca_file}")

  worker_toml = join("", concat(
    [templatefile("${path.module}/templates/worker.toml.tftpl", {
      model            = var.model
      port             = var.port
      batch            = var.batch
      decode_memory_mb = var.decode_memory_mb
      idle_poll_ms     = var.idle_poll_ms
      lease_seconds    = var.lease_seconds
    })],
    var.consume_jobs ? [templatefile("${path.module}/templates/backends.toml.tftpl", {
      database_connections     = var.database_connections
      s3_bucket                = var.s3_bucket
      s3_region                = var.s3_region
      s3_access_key_id         = var.s3_access_key_id
      qdrant_url               = var.qdrant_url
      qdrant_collection_prefix = var.qdrant_collection_prefix
    })] : [],
    var.reranker_model != null ? [templatefile("${path.module}/templates/reranker.toml.tftpl", {
      reranker_model          = var.reranker_model
      reranker_max_candidates = var.reranker_max_candidates
      reranker_image_tokens   = var.reranker_image_tokens
    })] : [],
    var.reranker_model != null && var.reranker_learn_every_clicks != null ? [templatefile("${path.module}/templates/reranker_learning.toml.tftpl", {
      reranker_learn_every_clicks = var.reranker_learn_every_clicks
    })] : [],
  ))

  worker_env = join("", concat(
    [templatefile("${path.module}/templates/worker.env.tftpl", {
      worker_token = var.worker_token
    })],
    var.consume_jobs ? [templatefile("${path.module}/templates/backends.env.tftpl", {
      database_url         = local.database_url
      s3_secret_access_key = var.s3_secret_access_key
      qdrant_api_key       = var.qdrant_api_key
    })] : [],
  ))
}

resource "aws_secretsmanager_secret" "worker" {
  #checkov:skip=CKV2_AWS_57:The secret copies values made elsewhere (tokens, passwords, access keys): they rotate at their source and a re-apply
  name_prefix = "${var.name}-worker-"
  description = "Glimpse worker pool ${var.name}: its GLIMPSE__ secret settings"
  kms_key_id  = local.kms_key_arn
  tags        = var.tags
}

resource "aws_secretsmanager_secret_version" "worker" {
  secret_id     = aws_secretsmanager_secret.worker.id
  secret_string = local.worker_env

  lifecycle {
    precondition {
      condition = !var.consume_jobs || alltrue([
        for value in [var.database_url, var.s3_bucket, var.s3_region, var.s3_access_key_id, var.s3_secret_access_key, var.qdrant_url, var.qdrant_api_key] : value != null
      ])
      error_message = "A pool that consumes jobs needs database_url, s3_bucket, s3_region, s3_access_key_id, s3_secret_access_key, qdrant_url and qdrant_api_key."
    }
    precondition {
      condition     = var.reranker_model == null || var.consume_jobs
      error_message = "The reranker reads the photos from the bucket: set consume_jobs (and its backends) with reranker_model."
    }
  }
}

# ---------------------------------------------------------------------------------------------
# The instances

data "aws_iam_policy_document" "instance_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "instance" {
  statement {
    sid       = "ReadOwnSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.worker.arn]
  }

  statement {
    sid       = "DecryptOwnSecrets"
    actions   = ["kms:Decrypt"]
    resources = [local.kms_key_arn]
  }
}

resource "aws_iam_role" "instance" {
  name_prefix        = "${var.name}-worker-"
  assume_role_policy = data.aws_iam_policy_document.instance_trust.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "instance" {
  name   = "secrets"
  role   = aws_iam_role.instance.id
  policy = data.aws_iam_policy_document.instance.json
}

# Operators reach the instances through Session Manager: no SSH port is open.
resource "aws_iam_role_policy_attachment" "session_manager" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "worker" {
  name_prefix = "${var.name}-worker-"
  role        = aws_iam_role.instance.name
  tags        = var.tags
}

resource "aws_security_group" "worker" {
  name_prefix = "${var.name}-worker-"
  description = "Glimpse workers: the internal API from the load balancer and the clients only"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "worker_from_load_balancer" {
  count = var.load_balancer ? 1 : 0

  security_group_id            = aws_security_group.worker.id
  description                  = "Internal API from the load balancer"
  referenced_security_group_id = aws_security_group.load_balancer[0].id
  ip_protocol                  = "tcp"
  from_port                    = var.port
  to_port                      = var.port
}

resource "aws_vpc_security_group_ingress_rule" "worker_from_groups" {
  for_each = var.load_balancer ? toset([]) : toset(var.client_security_group_ids)

  security_group_id            = aws_security_group.worker.id
  description                  = "Internal API from a client group"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = var.port
  to_port                      = var.port
}

resource "aws_vpc_security_group_ingress_rule" "worker_from_networks" {
  for_each = var.load_balancer ? toset([]) : toset(var.client_cidr_blocks)

  security_group_id = aws_security_group.worker.id
  description       = "Internal API from a client network"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.port
  to_port           = var.port
}

# The model download (Hugging Face), S3, Secrets Manager, Qdrant Cloud and Postgres are reached
# over HTTPS or their own TLS ports.
resource "aws_vpc_security_group_egress_rule" "worker" {
  security_group_id = aws_security_group.worker.id
  description       = "Outbound to the backends and the model hub"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

resource "aws_launch_template" "worker" {
  name_prefix   = "${var.name}-worker-"
  image_id      = var.image_id
  instance_type = var.instance_type
  tags          = var.tags

  update_default_version = true
  ebs_optimized          = true

  user_data = base64encode(templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    worker_toml = local.worker_toml
    fetch_secrets = templatefile("${path.module}/templates/fetch-secrets.sh.tftpl", {
      region     = data.aws_region.current.name
      secret_arn = aws_secretsmanager_secret.worker.arn
    })
    service          = file("${path.module}/templates/glimpse-worker.service")
    release_url      = var.release_url
    release_sha256   = var.release_sha256
    ca_bundle_url    = var.consume_jobs ? var.database_ca_bundle_url : null
    database_ca_file = local.database_ca_file
  }))

  iam_instance_profile {
    arn = aws_iam_instance_profile.worker.arn
  }

  vpc_security_group_ids = [aws_security_group.worker.id]

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/sda1"

    ebs {
      volume_size           = var.volume_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = local.kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-worker" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-worker" })
  }

  depends_on = [aws_secretsmanager_secret_version.worker]
}

resource "aws_autoscaling_group" "pool" {
  name_prefix         = "${var.name}-"
  min_size            = var.min_size
  max_size            = var.max_size
  vpc_zone_identifier = var.subnet_ids

  health_check_type         = var.load_balancer ? "ELB" : "EC2"
  health_check_grace_period = 600
  target_group_arns         = var.load_balancer ? [aws_lb_target_group.worker[0].arn] : []
  default_instance_warmup   = 300

  launch_template {
    id      = aws_launch_template.worker.id
    version = aws_launch_template.worker.latest_version
  }

  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = 50
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-worker"
    propagate_at_launch = true
  }

  # The scaler owns the capacity between min_size and max_size.
  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

# ---------------------------------------------------------------------------------------------
# The internal API behind an internal load balancer

resource "aws_security_group" "load_balancer" {
  count = var.load_balancer ? 1 : 0

  name_prefix = "${var.name}-workers-lb-"
  description = "Glimpse workers' internal load balancer: the edge and the operator only"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "load_balancer_from_groups" {
  for_each = var.load_balancer ? toset(var.client_security_group_ids) : toset([])

  security_group_id            = aws_security_group.load_balancer[0].id
  description                  = "Internal API from a client group"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = var.port
  to_port                      = var.port
}

resource "aws_vpc_security_group_ingress_rule" "load_balancer_from_networks" {
  for_each = var.load_balancer ? toset(var.client_cidr_blocks) : toset([])

  security_group_id = aws_security_group.load_balancer[0].id
  description       = "Internal API from a client network"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.port
  to_port           = var.port
}

resource "aws_vpc_security_group_egress_rule" "load_balancer_to_workers" {
  count = var.load_balancer ? 1 : 0

  security_group_id            = aws_security_group.load_balancer[0].id
  description                  = "To the workers' internal API"
  referenced_security_group_id = aws_security_group.worker.id
  ip_protocol                  = "tcp"
  from_port                    = var.port
  to_port                      = var.port
}

resource "aws_lb" "internal_api" {
  #checkov:skip=CKV_AWS_91:Network Load Balancers log TLS listeners only; this one forwards TCP inside the VPC and the workers log requests
  #checkov:skip=CKV_AWS_150:The internal load balancer holds no data and is recreated in seconds; protection would only block destroying a pool
  count = var.load_balancer ? 1 : 0

  name_prefix                      = substr(var.name, 0, 6)
  internal                         = true
  load_balancer_type               = "network"
  subnets                          = var.subnet_ids
  security_groups                  = [aws_security_group.load_balancer[0].id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = false
  tags                             = var.tags
}

resource "aws_lb_target_group" "worker" {
  count = var.load_balancer ? 1 : 0

  name_prefix          = substr(var.name, 0, 6)
  port                 = var.port
  protocol             = "TCP"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  tags                 = var.tags

  health_check {
    protocol            = "HTTP"
    path                = "/healthz"
    port                = "traffic-port"
    healthy_threshold   = 2
    unhealthy_threshold = 3
    interval            = 10
  }
}

resource "aws_lb_listener" "internal_api" {
  count = var.load_balancer ? 1 : 0

  load_balancer_arn = aws_lb.internal_api[0].arn
  port              = var.port
  protocol          = "TCP"
  tags              = var.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.worker[0].arn
  }
}

# ---------------------------------------------------------------------------------------------
# Scale to zero: a function publishes the pending work every minute; the pool wakes when there is
# any, grows with it, and goes back to min_size when it stayed at 0 for idle_minutes.

resource "aws_secretsmanager_secret" "api_token" {
  #checkov:skip=CKV2_AWS_57:The secret copies values made elsewhere (tokens, passwords, access keys): they rotate at their source and a re-apply
  count = local.scaling ? 1 : 0

  name_prefix = "${var.name}-scaler-"
  description = "Glimpse worker pool ${var.name}: the edge API token its scaler reads the status with"
  kms_key_id  = local.kms_key_arn
  tags        = var.tags
}

resource "aws_secretsmanager_secret_version" "api_token" {
  count = local.scaling ? 1 : 0

  secret_id     = aws_secretsmanager_secret.api_token[0].id
  secret_string = var.api_token

  lifecycle {
    precondition {
      condition     = var.api_token != null
      error_message = "Scaling on pending work needs api_token (to read the edge's status)."
    }
  }
}

data "archive_file" "scaler" {
  type        = "zip"
  source_file = "${path.module}/scaler/publish_pending_work.py"
  output_path = "${path.root}/.terraform/glimpse-${var.name}-scaler.zip"
}

data "aws_iam_policy_document" "scaler_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "scaler" {
  count = local.scaling ? 1 : 0

  name_prefix        = "${var.name}-scaler-"
  assume_role_policy = data.aws_iam_policy_document.scaler_trust.json
  tags               = var.tags
}

locals {
  metric_namespace = "Glimpse"
}

data "aws_iam_policy_document" "scaler" {
  count = local.scaling ? 1 : 0

  statement {
    sid       = "PublishPendingWork"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [local.metric_namespace]
    }
  }

  statement {
    sid       = "ReadToken"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.api_token[0].arn]
  }

  statement {
    sid       = "Decrypt"
    actions   = ["kms:Decrypt"]
    resources = [local.kms_key_arn]
  }

  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.scaler[0].arn}:*"]
  }

  statement {
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "scaler" {
  count = local.scaling ? 1 : 0

  name   = "publish-pending-work"
  role   = aws_iam_role.scaler[0].id
  policy = data.aws_iam_policy_document.scaler[0].json
}

resource "aws_cloudwatch_log_group" "scaler" {
  count = local.scaling ? 1 : 0

  name              = "/aws/lambda/${var.name}-scaler"
  retention_in_days = 365
  kms_key_id        = local.kms_key_arn
  tags              = var.tags
}

resource "aws_lambda_function" "scaler" {
  #checkov:skip=CKV_AWS_116:A scheduled reading that fails is replaced by the next one a minute later; a dead-letter queue would hold nothing of use
  #checkov:skip=CKV_AWS_117:It reads the edge's public status URL; inside a VPC it would need a NAT gateway for that alone
  #checkov:skip=CKV_AWS_272:Its code is this module's own file, pinned by its hash in the plan
  count = local.scaling ? 1 : 0

  function_name    = "${var.name}-scaler"
  description      = "Publishes the work waiting for the Glimpse worker pool ${var.name}"
  role             = aws_iam_role.scaler[0].arn
  runtime          = "python3.12"
  handler          = "publish_pending_work.handler"
  filename         = data.archive_file.scaler.output_path
  source_code_hash = data.archive_file.scaler.output_base64sha256
  timeout          = 20
  memory_size      = 128
  kms_key_arn      = local.kms_key_arn

  # One at a time: a slow edge must not pile up readers.
  reserved_concurrent_executions = 1

  environment {
    variables = {
      STATUS_URL       = var.status_url
      TOKEN_SECRET_ARN = aws_secretsmanager_secret.api_token[0].arn
      METRIC_NAMESPACE = local.metric_namespace
      POOL_NAME        = var.name
    }
  }

  tracing_config {
    mode = "Active"
  }

  tags       = var.tags
  depends_on = [aws_cloudwatch_log_group.scaler, aws_iam_role_policy.scaler]

  lifecycle {
    precondition {
      condition     = var.status_url != null
      error_message = "Scaling on pending work needs status_url (the edge's /api/status)."
    }
  }
}

resource "aws_cloudwatch_event_rule" "every_minute" {
  count = local.scaling ? 1 : 0

  name                = "${var.name}-scaler"
  description         = "Publish the work waiting for the Glimpse worker pool ${var.name}"
  schedule_expression = "rate(1 minute)"
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "scaler" {
  count = local.scaling ? 1 : 0

  rule = aws_cloudwatch_event_rule.every_minute[0].name
  arn  = aws_lambda_function.scaler[0].arn
}

resource "aws_lambda_permission" "schedule" {
  count = local.scaling ? 1 : 0

  statement_id  = "AllowSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.scaler[0].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.every_minute[0].arn
}

locals {
  # Workers wanted for the pending work: one from the first photo, one more per pending_per_worker.
  steps = [
    for workers in range(max(var.min_size, 1), var.max_size + 1) : {
      workers = workers
      # Bounds are relative to the alarm's threshold (1 pending photo).
      lower = workers == max(var.min_size, 1) ? 0 : (workers - 1) * var.pending_per_worker - 1
      upper = workers == var.max_size ? null : workers * var.pending_per_worker - 1
    }
  ]
}

resource "aws_autoscaling_policy" "wake" {
  count = local.scaling ? 1 : 0

  name                   = "${var.name}-wake-and-grow"
  autoscaling_group_name = aws_autoscaling_group.pool.name
  policy_type            = "StepScaling"
  adjustment_type        = "ExactCapacity"

  dynamic "step_adjustment" {
    for_each = local.steps

    content {
      scaling_adjustment          = step_adjustment.value.workers
      metric_interval_lower_bound = step_adjustment.value.lower
      metric_interval_upper_bound = step_adjustment.value.upper
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "work_waiting" {
  count = local.scaling ? 1 : 0

  alarm_name          = "${var.name}-work-waiting"
  alarm_description   = "Photos wait for the Glimpse worker pool ${var.name}: wake it, grow it"
  namespace           = local.metric_namespace
  metric_name         = "PendingWork"
  dimensions          = { Pool = var.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = [aws_autoscaling_policy.wake[0].arn]
  tags                = var.tags
}

resource "aws_autoscaling_policy" "sleep" {
  count = local.scaling ? 1 : 0

  name                   = "${var.name}-sleep"
  autoscaling_group_name = aws_autoscaling_group.pool.name
  policy_type            = "SimpleScaling"
  adjustment_type        = "ExactCapacity"
  scaling_adjustment     = var.min_size
  cooldown               = 60
}

resource "aws_cloudwatch_metric_alarm" "idle" {
  count = local.scaling ? 1 : 0

  alarm_name          = "${var.name}-idle"
  alarm_description   = "Nothing waited for the Glimpse worker pool ${var.name} for ${var.idle_minutes} minutes: back to ${var.min_size}"
  namespace           = local.metric_namespace
  metric_name         = "PendingWork"
  dimensions          = { Pool = var.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = var.idle_minutes
  datapoints_to_alarm = var.idle_minutes
  threshold           = 0
  comparison_operator = "LessThanOrEqualToThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = [aws_autoscaling_policy.sleep[0].arn]
  tags                = var.tags
}
