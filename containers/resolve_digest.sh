#!/bin/bash
# Resolve the registry digest of an image in containers/image.env and record it there as NAME:TAG@sha256:...
# (then regenerate the launcher's copy), or with --check verify that the recorded digest is still what the
# tag points to. Needs network access to the registry; uses the Registry v2 API with an anonymous (or
# $REGISTRY_TOKEN) bearer token, so no docker engine is needed.
# Usage: containers/resolve_digest.sh BASE_IMAGE|IMAGE [--check]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd); ENV_FILE="$REPO/containers/image.env"
KEY=${1:?BASE_IMAGE or IMAGE}; MODE=${2:-record}
case "$KEY" in BASE_IMAGE|IMAGE) ;; *) echo "resolve_digest.sh: KEY must be BASE_IMAGE or IMAGE, got '$KEY'" >&2; exit 2 ;; esac
REF=$(sed -n "s/^$KEY=//p" "$ENV_FILE")
RECORDED=""; case "$REF" in *@sha256:*) RECORDED=${REF#*@}; REF=${REF%@*} ;; esac
NAME=${REF%:*}; TAG=${REF##*:}
[ "$NAME" != "$REF" ] && [ -n "$TAG" ] || { echo "resolve_digest.sh: $KEY must be NAME:TAG[@sha256:...], got '$REF'" >&2; exit 2; }
REGISTRY=${NAME%%/*}; REPOSITORY=${NAME#*/}
ACCEPT="application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json"
URL="https://$REGISTRY/v2/$REPOSITORY/manifests/$TAG"

headers() { curl -fsSI --max-time 30 -H "Accept: $ACCEPT" ${TOKEN:+-H "Authorization: Bearer $TOKEN"} "$URL"; }
TOKEN=${REGISTRY_TOKEN:-}
if ! HDRS=$(headers 2>/dev/null); then
  # 401: follow the WWW-Authenticate challenge for an anonymous pull token
  CHALLENGE=$( (curl -sSI --max-time 30 -H "Accept: $ACCEPT" "$URL" 2>/dev/null || true) | tr -d '\r' \
              | sed -n 's/^[Ww][Ww][Ww]-[Aa]uthenticate: Bearer //p')
  [ -n "$CHALLENGE" ] || { echo "resolve_digest.sh: cannot reach $URL (registry unreachable or no anonymous access; set REGISTRY_TOKEN)" >&2; exit 1; }
  field() { echo "$CHALLENGE" | tr ',' '\n' | sed -n "s/^$1=\"\(.*\)\"$/\1/p"; }
  REALM=$(field realm); SERVICE=$(field service); SCOPE=${SCOPE:-repository:$REPOSITORY:pull}
  TOKEN=$(curl -fsS --max-time 30 -G "$REALM" --data-urlencode "service=$SERVICE" --data-urlencode "scope=$SCOPE" \
          | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("token") or d["access_token"])')
  HDRS=$(headers)
fi
DIGEST=$(echo "$HDRS" | tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
case "$DIGEST" in sha256:*) ;; *) echo "resolve_digest.sh: registry returned no digest for $REF" >&2; exit 1 ;; esac

if [ "$MODE" = "--check" ]; then
  [ "$RECORDED" = "$DIGEST" ] && { echo "$KEY $REF@$DIGEST: recorded digest matches"; exit 0; }
  echo "resolve_digest.sh: $KEY records '${RECORDED:-no digest}', registry says $DIGEST for $REF" >&2; exit 1
fi
sed -i "s|^$KEY=.*|$KEY=$REF@$DIGEST|" "$ENV_FILE"
python3 "$REPO/containers/sync_image.py"
echo "$KEY=$REF@$DIGEST"
