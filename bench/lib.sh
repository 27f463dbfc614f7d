# Sourced by every bench script, from the repository root: `bench_init NAME [PACKAGE…]`
# installs what is missing (redis-server, redis-cli, and PACKAGE…), builds the release
# binary, and sets `rcops` (its path), `out` (bench/out) and `md` (bench/out/NAME.md, emptied).
bench_init() {
  local name=$1; shift
  scripts/ensure-deps "$@"
  cargo build --release --locked
  rcops=$PWD/target/release/rcops
  out=bench/out; mkdir -p "$out"; md="$out/$name.md"; : > "$md"
}
