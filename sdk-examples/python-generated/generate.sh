#!/usr/bin/env bash
# Regenerates app/main.py and app/models.py from openapi/user-server.yaml with
# fastapi-code-generator. The template is the generator's own, except that each
# handler body calls the function of the same name in app/handlers.py: that file
# is the only one a person writes. Usage: generate.sh [OUTPUT_DIR] (default: app)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/app}"
fastapi-codegen --input "$here/../../openapi/user-server.yaml" --output "$out" \
  --template-dir "$here/template" --disable-timestamp 2>/dev/null
