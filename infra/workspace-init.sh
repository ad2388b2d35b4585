#!/bin/sh
# Entrypoint of the squeeze image: make $SQUEEZE_WORKSPACE a git + DVC workspace holding the
# image's pipeline, then run the command (the Prefect worker by default).
#
# First start (an empty volume): git init, dvc init, params.yaml from the image. Every start:
# the code (squeeze/, stages/, flows/, dvc.yaml, profiles/) is refreshed from the image and
# committed, so runs record which code made them; params.yaml and the outputs are kept.
# With SQUEEZE_S3_ENDPOINT and SQUEEZE_BUCKET set (docker-compose sets them to MinIO), the DVC
# remote and the model registry go to s3://$SQUEEZE_BUCKET/{dvc,registry} on that endpoint.
# Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment only.
set -eu

ws="${SQUEEZE_WORKSPACE:-/workspace}"
src="${SQUEEZE_SOURCE:-/opt/squeeze}"  # where the image keeps the project
mkdir -p "$ws"
cd "$ws"

if [ ! -d .git ]; then
    git init -q
    git config user.email "squeeze@localhost"
    git config user.name "squeeze worker"
fi
for path in squeeze stages flows profiles; do
    rm -rf "$path"
    cp -r "$src/$path" "$path"
done
cp "$src/dvc.yaml" "$src/.dvcignore" "$src/.gitignore" .
[ -f params.yaml ] || cp "$src/params.yaml" params.yaml
[ -d .dvc ] || dvc init -q
dvc config core.analytics false

if [ -n "${SQUEEZE_S3_ENDPOINT:-}" ] && [ -n "${SQUEEZE_BUCKET:-}" ]; then
    dvc remote add -f -d s3 "s3://$SQUEEZE_BUCKET/dvc"
    dvc remote modify s3 endpointurl "$SQUEEZE_S3_ENDPOINT"
    # the registry endpoint is a param (promote.*): set it through a profile, like any param
    cat > profiles/s3.yaml <<YAML
promote:
  registry: s3://$SQUEEZE_BUCKET/registry
  endpoint_url: $SQUEEZE_S3_ENDPOINT
YAML
    squeeze profile s3 >/dev/null
fi

git add -A
git diff --cached --quiet || git commit -qm "squeeze workspace: pipeline code from the image"
exec "$@"
