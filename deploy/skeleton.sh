#!/bin/sh
# Reduces the Cargo workspace at SRC to a "skeleton" at DEST: the lock file,
# every Cargo.toml, and stub files for every build target (lib.rs empty,
# main.rs / build.rs / benches / examples / src/bin as `fn main() {}`).
#
# The container build compiles the skeleton first, so the layer holding every
# compiled dependency only changes when a manifest, the lock file or the set of
# targets changes, not when a source file does (cargo-chef's trick, without
# cargo-chef). The output depends only on those inputs: same input, same bytes.
#
# usage: deploy/skeleton.sh SRC DEST
set -eu

src=${1:?usage: skeleton.sh SRC DEST}
dest=${2:?usage: skeleton.sh SRC DEST}
mkdir -p "$dest"
cp "$src/Cargo.lock" "$dest/Cargo.lock"

cd "$src"
find . \( -name target -o -name .git -o -name node_modules -o -name .tasklab \) -prune -o \
    -name Cargo.toml -type f -print | LC_ALL=C sort | while read -r manifest; do
    dir=$(dirname "$manifest")
    mkdir -p "$dest/$dir"
    cp "$manifest" "$dest/$manifest"
    stub_main() { mkdir -p "$(dirname "$dest/$1")"; echo 'fn main() {}' > "$dest/$1"; }
    # The library, when there is one: empty.
    if [ -f "$dir/src/lib.rs" ]; then mkdir -p "$dest/$dir/src"; : > "$dest/$dir/src/lib.rs"; fi
    for f in "$dir/build.rs" "$dir/src/main.rs" "$dir"/src/bin/*.rs "$dir"/benches/*.rs "$dir"/examples/*.rs; do
        if [ -f "$f" ]; then stub_main "$f"; fi
    done
done
