#!/usr/bin/env bash
# Generates the seed corpora for the fuzz targets from the shipped image and the golden cases:
#
#   corpus/load_validate/  one input per image (see src/lib.rs for the format):
#                          images/*/ in full, images/default/ as build.toml + one other file each,
#                          tests/golden/_base, and every golden case overlaid on _base
#   corpus/parse_one/      every distinct config/build.toml among those
#
# Usage: builder/fuzz/seed.sh   (from anywhere; only adds or overwrites seed-* files, so inputs
# the fuzzer found are kept). Corpus directories are gitignored; this script is what's committed.
set -euo pipefail

fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
builder_dir=$(dirname "$fuzz_dir")
repo_dir=$(dirname "$builder_dir")
golden="$builder_dir/tests/golden"
lv="$fuzz_dir/corpus/load_validate"
po="$fuzz_dir/corpus/parse_one"
mkdir -p "$lv" "$po"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Prints the body of one file followed by the separator's newline.
body() {
    local f=$1
    if [[ -s $f ]]; then
        cat "$f"
        [[ $(tail -c1 "$f" | od -An -c | tr -d ' ') == '\n' ]] || printf '\n'
    else
        printf '\n'
    fi
}

# encode IMGDIR: prints the image as one load_validate input.
encode() {
    local img=$1 rel sel header f
    # build.toml is the text before the first header; without one the input starts with "%%".
    if [[ -f $img/config/build.toml ]]; then body "$img/config/build.toml"; fi
    while IFS= read -r rel; do
        f=$img/$rel
        header=""
        case $rel in
            config/build.toml) continue ;;
            config/manifest.toml) sel=m ;;
            config/security/web.toml) sel=w ;;
            config/vm/resources.toml) sel=r ;;
            config/vm/environment.toml) sel=e ;;
            config/kernel/defconfig.x86_64) sel=k ;;
            config/kernel/defconfig.arm64) sel=K ;;
            config/ai/*.toml) sel=a; header=$(basename "$rel" .toml) ;;
            config/packages/*.toml) sel=p; header=$(basename "$rel" .toml) ;;
            config/mcp/*.toml) sel=c; header=$(basename "$rel" .toml) ;;
            artifacts/capsem-init) sel=i ;;
            artifacts/capsem-bashrc) sel=h ;;
            artifacts/banner.txt) sel=n ;;
            artifacts/tips.txt) sel=t ;;
            artifacts/diagnostics/*) sel=d ;;
            certs/ca.crt) sel=x ;;
            */) sel=/; header=$rel ;;
            *) sel=/; header=$rel ;;
        esac
        if [[ $sel == / ]]; then printf '%%%%/%s\n' "$header"; else printf '%%%%%s%s\n' "$sel" "${header:+ $header}"; fi
        # Artifact contents are never read by the validator (only whether they exist): keep
        # inputs small.
        if [[ $rel == */ ]]; then :
        elif [[ $rel == artifacts/* && $(wc -c <"$f") -gt 64 ]]; then printf '#!/bin/sh\n'
        else body "$f"; fi
    done < <(cd "$img" && { find . -mindepth 1 -type f; find . -mindepth 1 -type d -empty -printf '%p/\n'; } | sed 's|^\./||' | LC_ALL=C sort)
    if [[ ! -f $img/artifacts/capsem-init || ! -f $img/artifacts/capsem-bashrc ]]; then
        printf '%%%%-\n'
    fi
}

# overlay SRC DST: the golden test's overlay (a file `<path>.delete` removes `<path>`).
overlay() {
    local src=$1 dst=$2 rel
    while IFS= read -r rel; do
        [[ $rel == expected.txt ]] && continue
        if [[ $rel == *.delete ]]; then
            rm -rf "${dst:?}/${rel%.delete}"
        else
            mkdir -p "$dst/$(dirname "$rel")"
            cp "$src/$rel" "$dst/$rel"
        fi
    done < <(cd "$src" && find . -type f | sed 's|^\./||' | LC_ALL=C sort)
}

# Kernel defconfigs from the golden base, for images that name defconfigs they do not ship.
add_defconfigs() {
    local img=$1 arch
    for arch in x86_64 arm64; do
        if [[ ! -f $img/config/kernel/defconfig.$arch ]]; then
            mkdir -p "$img/config/kernel"
            cp "$golden/_base/config/kernel/defconfig.x86_64" "$img/config/kernel/defconfig.$arch"
        fi
    done
}

n=0
emit() { # emit NAME IMGDIR
    encode "$2" >"$lv/seed-$1"
    if [[ -f $2/config/build.toml ]]; then
        cp "$2/config/build.toml" "$po/seed-$(sha1sum <"$2/config/build.toml" | cut -c1-16)"
    fi
    n=$((n + 1))
}

for img in "$repo_dir"/images/*/; do
    name=$(basename "$img")
    emit "image-$name-asis" "$img"
    cp -r "$img" "$work/$name"
    add_defconfigs "$work/$name"
    emit "image-$name" "$work/$name"
    # build.toml + defconfigs + one other config file, for small focused inputs.
    while IFS= read -r rel; do
        one="$work/$name-one"
        rm -rf "$one"
        mkdir -p "$one/config" "$one/artifacts"
        cp "$work/$name/config/build.toml" "$one/config/"
        cp -r "$work/$name/config/kernel" "$one/config/"
        mkdir -p "$one/config/$(dirname "$rel")"
        cp "$work/$name/config/$rel" "$one/config/$rel"
        printf '#!/bin/sh\n' >"$one/artifacts/capsem-init"
        : >"$one/artifacts/capsem-bashrc"
        emit "image-$name-$(echo "$rel" | tr '/' '-')" "$one"
    done < <(cd "$work/$name/config" && find . -name '*.toml' ! -path ./build.toml | sed 's|^\./||' | LC_ALL=C sort)
done

for case_dir in "$golden"/*/; do
    case=$(basename "$case_dir")
    img="$work/golden-$case"
    mkdir -p "$img"
    overlay "$golden/_base" "$img"
    [[ $case == _base ]] || overlay "$case_dir" "$img"
    emit "golden-$case" "$img"
done

echo "seed.sh: wrote $n seeds to $lv (and build.toml seeds to $po)"
