#!/usr/bin/env bash
# Parses every Nix file of the repository (flake.nix, nix/**) with `nix-instantiate --parse`, printing each, and
# stops at the first that does not parse. Parsing needs no nixpkgs and no network, so it runs anywhere Nix is
# installed (Debian: `apt-get install nix-bin`). Without nix-instantiate it fails, unless PANDO_NIX_OPTIONAL=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v nix-instantiate > /dev/null 2>&1; then
    echo "nix-instantiate not found: install Nix (on Debian: apt-get install nix-bin) to parse the Nix files"
    if [[ "${PANDO_NIX_OPTIONAL:-0}" == 1 ]]; then
        echo "PANDO_NIX_OPTIONAL=1: skipping the Nix parse check"
        exit 0
    fi
    exit 1
fi

mapfile -t files < <(
    find . \( -path ./.git -o -path ./target -o -path ./data -o -name result -o -name node_modules \) -prune \
        -o -type f -name '*.nix' -print | sed 's|^\./||' | LC_ALL=C sort
)
if [[ ${#files[@]} -eq 0 ]]; then
    echo "no .nix files found under $(pwd)"
    exit 1
fi

for file in "${files[@]}"; do
    if output=$(nix-instantiate --parse "$file" 2>&1 > /dev/null); then
        echo "ok      $file"
    else
        echo "FAILED  $file"
        echo "$output"
        exit 1
    fi
done
echo "all ${#files[@]} Nix files parse ($(nix-instantiate --version))"
