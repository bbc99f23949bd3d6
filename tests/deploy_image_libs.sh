#!/usr/bin/env bash
# deploy_image_libs.sh: the runtime stage of deploy/Dockerfile installs a package for every
# library `mrank` links directly (readelf NEEDED -> ldconfig -> dpkg -S), CUDA's aside (the image
# is built with -DMR_CUDA=OFF); the packages are read from the Dockerfile's "# runtime:" comment,
# which tests/deploy_check.sh holds equal to its apt line. The image holds a Release build; a
# sanitizer build links its runtimes and, without --as-needed, every library of gRPC's closure,
# so for one this prints why and exits 77 (ctest: Skipped); the main build's run checks it.
# Usage: deploy_image_libs.sh MRANK
set -euo pipefail
cd "$(dirname "$0")/.."
M=$1
needed=$(readelf -d "$M" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
[ -n "$needed" ] || { echo "FAIL: no NEEDED entries in $M"; exit 1; }
if grep -q 'san\.so' <<<"$needed"; then
  echo "SKIP: $M is a sanitizer build, not what the image holds: the library check DID NOT RUN"
  exit 77
fi
listed=$(sed -n 's/^# runtime: //p' deploy/Dockerfile)
[ -n "$listed" ] || { echo "FAIL: deploy/Dockerfile has no '# runtime:' line"; exit 1; }
fails=0 n=0
for lib in $(grep -v '^libcu' <<<"$needed" || true); do
  f=$(ldconfig -p | awk -v l="$lib" '!f && $1 == l && /x86-64/ {print $NF; f = 1}')
  [ -n "$f" ] || { echo "FAIL: cannot locate $lib"; exit 1; }
  r=$(readlink -f "$f")
  owner=""  # usrmerge: dpkg may know the file under /lib or /usr/lib
  for cand in "$f" "$r" "${r#/usr}" "/usr$r"; do
    owner=$(dpkg -S "$cand" 2>/dev/null | head -1 | cut -d: -f1) && [ -n "$owner" ] && break
  done
  [ -n "$owner" ] || { echo "FAIL: no Debian package owns $lib ($r)"; exit 1; }
  n=$((n + 1))
  case " libc6 libgcc-s1 libstdc++6 " in *" $owner "*) continue ;; esac  # in every Debian image
  if ! tr ' ' '\n' <<<"$listed" | grep -qxF -- "$owner"; then
    echo "FAIL: Dockerfile runtime stage lacks $owner (mrank links $lib)"
    fails=$((fails + 1))
  fi
done
echo "deploy_image_libs: $n libraries, $fails missing from the image"
[ "$fails" = 0 ]
