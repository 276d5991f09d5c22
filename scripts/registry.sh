#!/usr/bin/env bash
# A throwaway image registry (Debian's docker-registry, the CNCF
# distribution registry) on loopback, with htpasswd logins, for the tests
# and benchmarks. The Docker Engine pulls from 127.0.0.0/8 without TLS.
#   scripts/registry.sh install                     installs docker-registry and htpasswd if missing
#   scripts/registry.sh start DIR USER PASS [PORT]  starts one in DIR (a free port unless given);
#                                                   prints its address, 127.0.0.1:PORT
#   scripts/registry.sh stop DIR                    stops it (its images stay in DIR)
#   scripts/registry.sh push DIR IMAGE NAME         pushes local IMAGE as ADDRESS/NAME (logged in as USER)
set -euo pipefail

install() {
    if ! command -v docker-registry >/dev/null 2>&1 || ! command -v htpasswd >/dev/null 2>&1; then
        echo "registry.sh: installing docker-registry and apache2-utils" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry apache2-utils >/dev/null
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
    install)
        install
        ;;
    start)
        dir="${2:?usage: registry.sh start DIR USER PASS [PORT]}"
        user="${3:?usage: registry.sh start DIR USER PASS [PORT]}"
        pass="${4:?usage: registry.sh start DIR USER PASS [PORT]}"
        port="${5:-$(free_port)}"
        install
        mkdir -p "$dir/data"
        htpasswd -Bbn "$user" "$pass" > "$dir/htpasswd"
        cat > "$dir/config.yml" <<YAML
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
auth:
  htpasswd:
    realm: shepherd-test
    path: $dir/htpasswd
YAML
        printf '%s\n%s\n' "$user" "$pass" > "$dir/login"
        docker-registry serve "$dir/config.yml" >> "$dir/registry.log" 2>&1 &
        echo $! > "$dir/pid"
        for _ in $(seq 1 100); do
            code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/" || true)"
            if [ "$code" = 401 ]; then
                echo "127.0.0.1:$port" > "$dir/address"
                echo "127.0.0.1:$port"
                exit 0
            fi
            sleep 0.1
        done
        echo "registry.sh: the registry did not start; see $dir/registry.log" >&2
        exit 1
        ;;
    stop)
        dir="${2:?usage: registry.sh stop DIR}"
        if [ -f "$dir/pid" ]; then
            pid="$(cat "$dir/pid")"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/pid"
        fi
        ;;
    push)
        dir="${2:?usage: registry.sh push DIR IMAGE NAME}"
        image="${3:?usage: registry.sh push DIR IMAGE NAME}"
        name="${4:?usage: registry.sh push DIR IMAGE NAME}"
        address="$(cat "$dir/address")"
        { read -r user; read -r pass; } < "$dir/login"
        # Its own Docker client config: the caller's logins are left alone.
        export DOCKER_CONFIG="$dir/docker-config"
        mkdir -p "$DOCKER_CONFIG"
        printf '%s' "$pass" | docker login "$address" -u "$user" --password-stdin >/dev/null 2>&1
        docker tag "$image" "$address/$name"
        docker push "$address/$name" >/dev/null
        docker rmi "$address/$name" >/dev/null
        echo "$address/$name"
        ;;
    *)
        echo "usage: registry.sh install | start DIR USER PASS [PORT] | stop DIR | push DIR IMAGE NAME" >&2
        exit 2
        ;;
esac
