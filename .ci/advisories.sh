#!/usr/bin/env bash
# `cargo deny check advisories` offline, against the RustSec snapshot in ../shared/advisory-db
# (or $ADVISORY_DB) when that directory exists; skipped with a note otherwise. Where GitHub is
# reachable, `cargo deny check advisories` alone fetches and checks the live database.
#
# cargo-deny reads a database from DB_PATH/advisory-db-3157b0e258782691 (its directory name for
# the default database URL) and wants it to be a git repository, whose HEAD commit date it
# takes as the database's date. The snapshot has no history, so it is copied into target/,
# made a repository and committed once with the snapshot's own date.
set -euo pipefail
cd "$(dirname "$0")/.."
SNAPSHOT=${ADVISORY_DB:-../shared/advisory-db}
if [ ! -d "$SNAPSHOT/crates" ]; then
  echo "advisories: no snapshot at $SNAPSHOT, skipped (online: cargo deny check advisories)"
  exit 0
fi
DB=target/advisory-db
REPO=$DB/advisory-db-3157b0e258782691
rm -rf "$DB" && mkdir -p "$DB" && cp -r "$SNAPSHOT" "$REPO"
when=$(sed -n 's/.*committed \([0-9T:+-]*\).*/\1/p' "$REPO/SNAPSHOT" | head -1)
(
  cd "$REPO"
  git init -q
  git add -A
  GIT_AUTHOR_DATE="$when" GIT_COMMITTER_DATE="$when" \
    git -c user.name=advisory-db -c user.email=advisory-db@localhost commit -qm "snapshot $when"
)
sed "s|^\[advisories\]|[advisories]\ndb-path = \"$DB\"|" deny.toml > "$DB/deny.toml"
cargo deny --offline --config "$DB/deny.toml" check advisories
