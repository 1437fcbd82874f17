#!/usr/bin/env bash
# Rebuild the exam's document set from Debian's packages into TARGET_DIR and check it against
# SHA256SUMS. The documents already ship in documents/; this script is how they were obtained,
# and a way to check that they're unmodified copies of what Debian distributes.
#
#   bash benchmarks/exam_data/fetch_documents.sh /tmp/exam-docs
#
# Needs a Debian machine with apt (run `apt-get update` once first), dpkg-deb, zcat and sha256sum.
# Idempotent: files already in TARGET_DIR with the right checksum are kept, and packages are
# downloaded only if some file is missing or wrong. It asks for the exact package versions
# recorded below first; Debian's archive drops superseded security updates, so when a
# version is gone it takes the current one and says so. A changed file then fails the check
# (exit status 1): the shipped copy in documents/ stays the reference.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${1:?usage: fetch_documents.sh TARGET_DIR}"
mkdir -p "$target"
target="$(cd "$target" && pwd)"

# package=version of each source, then: file name in the exam <- path inside the package (.gz: unpacked)
packages=(
  "python-reportlab-doc=3.6.12-1+deb12u1"
  "sqlite3-doc=3.40.1-2+deb12u2"
  "postgresql-doc-15=15.20-0+deb12u1"
  "python3.11-doc=3.11.2-6+deb12u9"
  "libcurl4-doc=7.88.1-10+deb12u15"
)
files=(
  "reportlab-userguide.pdf            usr/share/doc/python-reportlab-doc/reportlab-userguide.pdf"
  "sqlite-datatypes.html              usr/share/doc/sqlite3/datatype3.html"
  "sqlite-wal.html                    usr/share/doc/sqlite3/wal.html"
  "sqlite-foreign-keys.html           usr/share/doc/sqlite3/foreignkeys.html"
  "postgresql-routine-vacuuming.html  usr/share/doc/postgresql-doc-15/html/routine-vacuuming.html"
  "postgresql-constraints.html        usr/share/doc/postgresql-doc-15/html/ddl-constraints.html"
  "python-json.html                   usr/share/doc/python3.11/html/library/json.html"
  "python-venv-tutorial.html          usr/share/doc/python3.11/html/tutorial/venv.html"
  "python-logging-howto.html          usr/share/doc/python3.11/html/howto/logging.html"
  "curl-faq.txt                       usr/share/doc/libcurl4/FAQ.gz"
  "curl-http-cookies.md               usr/share/doc/libcurl4/HTTP-COOKIES.md.gz"
  "curl-url-syntax.md                 usr/share/doc/libcurl4/URL-SYNTAX.md.gz"
)

if (cd "$target" && sha256sum --check --quiet "$here/SHA256SUMS" >/dev/null 2>&1); then
  echo "All ${#files[@]} documents already in $target with the right checksums."
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # lets apt's unprivileged _apt user write the downloads
cd "$work"
for spec in "${packages[@]}"; do
  name="${spec%%=*}"
  if ! apt-get download -q "$spec" >/dev/null 2>&1; then
    echo "note: $spec is no longer in the archive; taking the current $name instead" >&2
    apt-get download -q "$name" >/dev/null
  fi
done
mkdir root
for deb in ./*.deb; do
  dpkg-deb --extract "$deb" root
  dpkg-deb --show "$deb"
done

for line in "${files[@]}"; do
  read -r name path <<<"$line"
  if [[ "$path" == *.gz ]]; then
    zcat "root/$path" >"$target/$name.tmp"
  else
    cp "root/$path" "$target/$name.tmp"
  fi
  mv "$target/$name.tmp" "$target/$name"
done

cd "$target"
if sha256sum --check "$here/SHA256SUMS"; then
  echo "OK: ${#files[@]} documents in $target match SHA256SUMS."
else
  echo "Some documents differ from the shipped copies (a newer package version?); documents/ remains the reference." >&2
  exit 1
fi
