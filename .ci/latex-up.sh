#!/usr/bin/env bash
# A real LaTeX engine for the analysis tests (they compile the generated tables when pdflatex is on PATH).
set -euo pipefail
if command -v pdflatex >/dev/null 2>&1; then echo "latex: pdflatex present"; exit 0; fi
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends texlive-latex-base texlive-latex-recommended >/dev/null
echo "latex: installed in $(( $(date +%s) - start ))s"
