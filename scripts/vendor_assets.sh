#!/usr/bin/env bash
# Fetch the page's front-end packages from the npm registry at pinned versions and copy their
# built files and licences into app/static/vendor/<package>/, then write VERSIONS.md.
# The vendored files are committed: the dashboard, /docs and /redoc work offline, with no CDN.
#
#   scripts/vendor_assets.sh          # re-fetch after changing a version below
#
# Needs npm (only `npm pack`: nothing is installed, no package scripts run).
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=app/static/vendor

# package@version, then the files to copy, relative to the package root.
# redoc stays on 2.x: FastAPI's get_redoc_html is written for it (redoc 3 adds telemetry).
PACKAGES=(
    "swagger-ui-dist@5.35.0 swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE"
    "redoc@2.5.4 bundles/redoc.standalone.js bundles/redoc.standalone.js.LICENSE.txt LICENSE"
    "uplot@1.6.32 dist/uPlot.esm.js dist/uPlot.min.css LICENSE"
)

# Offline patches, file by file: "file|from|to". ReDoc 2 draws the Redocly logo in its sidebar
# from a CDN, which offline is a failed request and a console error; an empty inline SVG
# takes its place (the "API docs by Redocly" link stays).
PATCHES=(
    "redoc/redoc.standalone.js|https://cdn.redoc.ly/redoc/logo-mini.svg|data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/%3E"
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

versions="$work/VERSIONS.md"
{
    echo "# Vendored front-end packages"
    echo
    echo "Written by \`scripts/vendor_assets.sh\` (do not edit by hand): each package fetched with"
    echo "\`npm pack NAME@VERSION\` from the npm registry, its built files copied unchanged except where a"
    echo "patch is listed (only to keep a page from reaching the internet)."
    echo
} > "$versions"

rm -rf "$DEST.new" && mkdir -p "$DEST.new"
for entry in "${PACKAGES[@]}"; do
    read -r spec files <<< "$entry"
    name=${spec%@*}
    version=${spec##*@}
    echo "vendor: $spec"
    (cd "$work" && npm pack --silent "$spec" > "$name.tgz.name")
    tarball="$work/$(cat "$work/$name.tgz.name")"
    mkdir -p "$work/$name"
    tar -xzf "$tarball" -C "$work/$name"
    root="$work/$name/package"
    licence=$(node -e 'const p=require(process.argv[1]); console.log(p.license || "see LICENSE")' "$root/package.json")
    actual=$(node -e 'console.log(require(process.argv[1]).version)' "$root/package.json")
    [ "$actual" = "$version" ] || { echo "vendor: $name is $actual, wanted $version" >&2; exit 1; }
    {
        echo "## $name $version"
        echo
        echo "- licence: $licence (\`$name/LICENSE\`)"
        echo "- tarball sha256: \`$(sha256sum "$tarball" | cut -d' ' -f1)\`"
        echo
        echo "| file | bytes | sha256 |"
        echo "|---|---|---|"
    } >> "$versions"
    mkdir -p "$DEST.new/$name"
    patched=""
    for file in $files; do
        base=$(basename "$file")
        target="$DEST.new/$name/$base"
        cp "$root/$file" "$target"
        for patch in "${PATCHES[@]}"; do
            IFS='|' read -r pfile from to <<< "$patch"
            [ "$pfile" = "$name/$base" ] || continue
            grep -qF "$from" "$target" || { echo "vendor: patch target '$from' not in $pfile" >&2; exit 1; }
            FROM="$from" TO="$to" perl -0pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/g' "$target"
            patched+="- patched \`$name/$base\` (npm's sha256 \`$(sha256sum "$root/$file" | cut -d' ' -f1)\`): \`$from\` → \`$to\`"$'\n'
        done
        echo "| \`$name/$base\` | $(stat -c %s "$target") | \`$(sha256sum "$target" | cut -d' ' -f1)\` |" >> "$versions"
    done
    echo >> "$versions"
    [ -z "$patched" ] || printf '%s\n' "$patched" >> "$versions"
done
cp "$versions" "$DEST.new/VERSIONS.md"
rm -rf "$DEST" && mv "$DEST.new" "$DEST"
echo "vendor: wrote $DEST (see $DEST/VERSIONS.md)"
