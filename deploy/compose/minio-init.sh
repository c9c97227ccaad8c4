#!/bin/sh
# minio-init (docker-compose.yml): the bucket, a policy limited to the bucket and the key
# prefix, and the app's user with that policy. Idempotent; runs as a one-shot service.
#
# Env: MINIO_URL, MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, APP_ACCESS_KEY, APP_SECRET_KEY,
#      S3_BUCKET_NAME, S3_KEY_PREFIX. Root credentials reach mc through MC_HOST_root (an
#      environment variable), never through its command line.
set -eu

: "${MINIO_URL:?}" "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${APP_ACCESS_KEY:?}" "${APP_SECRET_KEY:?}" "${S3_BUCKET_NAME:?}" "${S3_KEY_PREFIX:?}"
POLICY=cefmp4-app

scheme=${MINIO_URL%%://*}
hostport=${MINIO_URL#*://}
export MC_HOST_root="$scheme://$MINIO_ROOT_USER:$MINIO_ROOT_PASSWORD@$hostport"

mc mb --ignore-existing "root/$S3_BUCKET_NAME"

# What cefmp4 calls (docs/troubleshooting.md): listing the bucket (HeadBucket, ListObjectsV2,
# ListMultipartUploads) and object calls under the prefix only. No DeleteObject, no
# CreateBucket, nothing on other buckets.
policy_file=${TMPDIR:-/tmp}/cefmp4-policy.json
cat > "$policy_file" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "TheBucket",
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::$S3_BUCKET_NAME"]
    },
    {
      "Sid": "ObjectsUnderThePrefix",
      "Effect": "Allow",
      "Action": [
        "s3:GetObject",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"
      ],
      "Resource": ["arn:aws:s3:::$S3_BUCKET_NAME/$S3_KEY_PREFIX*"]
    },
    {
      "Sid": "OwnBookkeepingOnly",
      "Effect": "Allow",
      "Action": ["s3:DeleteObject"],
      "Resource": ["arn:aws:s3:::$S3_BUCKET_NAME/$S3_KEY_PREFIX.cefmp4/*"]
    }
  ]
}
JSON
mc admin policy create root "$POLICY" "$policy_file"

# mc takes the secret only as an argument; this container lives for a second and runs
# nothing else.
mc admin user add root "$APP_ACCESS_KEY" "$APP_SECRET_KEY"
if ! mc admin policy attach root "$POLICY" --user "$APP_ACCESS_KEY"; then
  # Already attached on an earlier run is fine; anything else is not.
  case "$(mc admin user info root "$APP_ACCESS_KEY")" in
    *"$POLICY"*) echo "minio-init: policy $POLICY already attached to $APP_ACCESS_KEY" ;;
    *) echo "minio-init: could not attach policy $POLICY to $APP_ACCESS_KEY" >&2; exit 1 ;;
  esac
fi
echo "minio-init: bucket $S3_BUCKET_NAME ready; user $APP_ACCESS_KEY may use ${S3_KEY_PREFIX}* only"
