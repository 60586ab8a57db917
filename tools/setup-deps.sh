#!/usr/bin/env bash
# Install the Debian packages netstack's test suite needs, then pre-fetch the test guest.
#
# Idempotent: installs only what is missing, and runs `apt-get update` only when something
# must be installed or apt has no package lists. Afterwards it builds the QEMU test guest
# (`python -m tools.guest build`: kernel and busybox-static .debs, initramfs) into its cache
# (~/.cache/netstack/guest or $NETSTACK_GUEST_CACHE) so that parallel tests do not race on
# the first download.
#
# Usage: tools/setup-deps.sh [--no-guest]
# Environment: NETSTACK_EXTRA_DEBS="pkg ..." adds packages; PYTHON picks the interpreter for
# the guest build (default: the repository's .venv, else python3).
set -euo pipefail

PACKAGES=(
    qemu-system-x86   # qemu-system-x86_64 (TCG guests); pulls seabios and ipxe-qemu
    busybox-static    # host-side busybox (the guest build downloads its own copy too)
    cpio
    tshark            # pcap assertions; setuid question preseeded below
    iperf3
    wrk               # HTTP load of bench/bench_user_workloads.py (keep-alive, new connections)
    nginx-light       # the HTTP server that bench serves its 1 KiB body from (host loopback)
    socat
    iproute2
    iputils-ping
    kmod              # modprobe (tun, vhost modules) on the host
    dpdk-dev          # dpdk-testpmd + vhost/virtio-user PMDs (vhost-user peer)
    isc-dhcp-client   # dhclient -6: a real DHCPv6 client for the user netdev's IPv6 tests
    slirp4netns       # libslirp: the user netdev's reference peer
    passt             # pasta: the other user-mode stack benchmarked against
    vde2              # vde_switch (and vdeplug: vde_plug): the vde netdev's real peers
    samba             # smbd: the user netdev's smb= server (started per netdev, inetd style)
    smbclient         # smbclient: the SMB client of the smb= tests
    systemd           # systemd-socket-activate: socket activation and sd_notify tests
    curl              # scrapes the metrics endpoint (HTTP over TCP and unix sockets)
    libseccomp2       # -sandbox: the seccomp filter library pyseccomp loads
    chromium          # headless browser: JavaScript WebSocket client of the websocket chardev
    fonts-dejavu-core # a font for chromium's screenshots of the web view
    telnet            # telnet client of the telnet chardev
    openssl           # s_client and certificate generation for the TLS chardev tests
    gnutls-bin        # gnutls-cli: the second TLS client of the TLS chardev tests
    ethtool           # vxlan tests: checksum offload off on veth underlays (see test_vxlan_kernel)
    gcc               # builds the C extensions (pyproject ext-modules: the compiled data
                      # path netstack/net/_fastnet.c, the vhost-user SIGBUS guard) and ASan
    python3-dev       # Python.h for those extensions
)
read -r -a extra <<<"${NETSTACK_EXTRA_DEBS:-}"
PACKAGES+=("${extra[@]}")

guest=1
for arg in "$@"; do
    case "$arg" in
        --no-guest) guest=0 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "setup-deps.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "setup-deps.sh: need root or sudo to run: $*" >&2
        exit 1
    fi
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$pkg")
done

need_update=0
((${#missing[@]})) && need_update=1
# The guest build resolves and downloads its kernel through apt: it needs package lists.
apt-cache show --no-all-versions linux-image-cloud-amd64 >/dev/null 2>&1 || need_update=1

if ((need_update)); then
    echo "setup-deps.sh: apt-get update" >&2
    as_root apt-get update -q
fi
if ((${#missing[@]})); then
    echo "setup-deps.sh: installing ${missing[*]}" >&2
    echo "wireshark-common wireshark-common/install-setuid boolean false" |
        as_root debconf-set-selections
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}"
else
    echo "setup-deps.sh: all packages present" >&2
fi

if ((guest)); then
    python=${PYTHON:-}
    if [ -z "$python" ]; then
        if [ -x "$repo/.venv/bin/python" ]; then python=$repo/.venv/bin/python; else python=python3; fi
    fi
    (cd "$repo" && "$python" -m tools.guest build)
fi
