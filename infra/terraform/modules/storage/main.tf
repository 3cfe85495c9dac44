# The bucket of originals: private, encrypted with KMS, versioned (a deleted original stays
# recoverable for deleted_version_days), refusing plain HTTP, incomplete multipart uploads
# aborted, with CORS for the web page's presigned PUTs, and one access key for the edge and one
# for the workers, each limited to it.

data "aws_caller_identity" "current" {}

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
}

resource "aws_kms_key" "originals" {
  count = var.kms_key_arn == null ? 1 : 0

  description             = "Glimpse originals in ${var.bucket_name}"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

locals {
  kms_key_arn = var.kms_key_arn != null ? var.kms_key_arn : aws_kms_key.originals[0].arn
}

resource "aws_s3_bucket" "originals" {
  #checkov:skip=CKV2_AWS_62:Nothing reacts to bucket events: the catalog's job queue drives indexing
  #checkov:skip=CKV_AWS_144:Replication to a second region is a cost decision left to the user; versioning keeps deleted originals recoverable
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_ownership_controls" "originals" {
  bucket = aws_s3_bucket.originals.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "originals" {
  bucket = aws_s3_bucket.originals.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "originals" {
  bucket = aws_s3_bucket.originals.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = local.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "originals" {
  bucket = aws_s3_bucket.originals.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "originals" {
  bucket     = aws_s3_bucket.originals.id
  depends_on = [aws_s3_bucket_versioning.originals]

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  # Staged uploads never completed are removed by the workers, which know which ones are
  # complete: a rule on the staged/ prefix would also remove the originals of completed large
  # uploads, which stay under it.
  rule {
    id     = "keep-deleted-originals-for-a-while"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.deleted_version_days
    }

    expiration {
      expired_object_delete_marker = true
    }
  }
}

resource "aws_s3_bucket_cors_configuration" "originals" {
  bucket = aws_s3_bucket.originals.id

  cors_rule {
    allowed_methods = ["PUT"]
    allowed_origins = var.web_origins
    allowed_headers = ["content-type", "content-length"]
    expose_headers  = ["etag"]
    max_age_seconds = 3600
  }

  cors_rule {
    allowed_methods = ["GET", "HEAD"]
    allowed_origins = var.web_origins
    max_age_seconds = 3600
  }
}

resource "aws_s3_bucket_logging" "originals" {
  count = var.access_log_bucket == null ? 0 : 1

  bucket        = aws_s3_bucket.originals.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3/${var.bucket_name}/"
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "RefusePlainHttp"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.originals.arn, "${aws_s3_bucket.originals.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "originals" {
  bucket     = aws_s3_bucket.originals.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.originals]
}

# Spin components sign S3 requests with an access key (they cannot assume a role), and so do the
# workers' settings. Each key belongs to a user in a group whose policy names this bucket only.

locals {
  # What each party does with originals: the edge stores uploads, presigns reads and staged
  # PUTs, completes staged uploads and deletes photos; the workers read originals, write large
  # objects in parts and remove staged uploads that expired.
  principals = {
    edge = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
    ]
    workers = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
  }
}

data "aws_iam_policy_document" "access" {
  for_each = local.principals

  statement {
    sid       = "Objects"
    actions   = each.value
    resources = ["${aws_s3_bucket.originals.arn}/*"]
  }

  # Without ListBucket a missing key reads as 403 instead of 404.
  statement {
    sid       = "Bucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.originals.arn]
  }

  statement {
    sid       = "Encryption"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [local.kms_key_arn]
  }
}

resource "aws_iam_group" "access" {
  for_each = local.principals

  name = "${var.bucket_name}-${each.key}"
}

resource "aws_iam_group_policy" "access" {
  for_each = local.principals

  name   = "originals"
  group  = aws_iam_group.access[each.key].name
  policy = data.aws_iam_policy_document.access[each.key].json
}

resource "aws_iam_user" "access" {
  #checkov:skip=CKV_AWS_273:Spin components and the workers' S3 settings sign requests with access keys; these users may only use this bucket
  for_each = local.principals

  name = "${var.bucket_name}-${each.key}"
  tags = var.tags
}

resource "aws_iam_user_group_membership" "access" {
  for_each = local.principals

  user   = aws_iam_user.access[each.key].name
  groups = [aws_iam_group.access[each.key].name]
}

resource "aws_iam_access_key" "access" {
  for_each = local.principals

  user = aws_iam_user.access[each.key].name
}
