#!/usr/bin/env bash
# The .deb that `cpack -G DEB` makes from the build tree: it must carry the
# command, the preload library, the CNI plugin where runtimes look and the
# systemd unit, and depend on Debian's packages of the libraries they use.
set -euo pipefail
build=$1
command -v cpack >/dev/null && command -v dpkg-deb >/dev/null ||
  { echo "SKIP: cpack or dpkg-deb missing"; exit 77; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
(cd "$build" && cpack -G DEB -B "$out" >"$out/cpack.log" 2>&1) ||
  { cat "$out/cpack.log"; echo "FAIL: cpack failed"; exit 1; }
package=$(ls "$out"/netaccel_*.deb)
contents=$(dpkg-deb -c "$package" | awk '{print $6}')
depends=$(dpkg-deb -f "$package" Depends)
echo "package: $(basename "$package")"
echo "depends: $depends"
for file in bin/netaccel lib/netaccel/libnetaccel_preload.so opt/cni/bin/netaccel-cni \
  usr/lib/cni/netaccel-cni lib/systemd/system/netaccel.service; do
  grep -q "$file\$" <<<"$contents" || { echo "FAIL: $file is not in the package"; exit 1; }
done
for dependency in libbpf1 libxdp1 libstdc++6 librte-eal23 librte-net-af-xdp23; do
  [[ $depends == *"$dependency"* ]] || { echo "FAIL: no dependency on $dependency"; exit 1; }
done
# The unit starts the binary the package installs.
exec_start=$(dpkg-deb --fsys-tarfile "$package" | tar -xO --wildcards '*/netaccel.service' |
  sed -n 's/^ExecStart=\([^ ]*\).*/\1/p')
grep -qx ".$exec_start" <<<"$contents" || { echo "FAIL: ExecStart $exec_start is not in the package"; exit 1; }
echo "PASS"
