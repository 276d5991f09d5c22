#!/usr/bin/env bash
# A throwaway image registry (Debian's docker-registry, the CNCF
# distribution registry) on loopback, with htpasswd logins, for the tests
# and benchmarks. The Docker Engine pulls from 127.0.0.0/8 without TLS.
#   scripts/registry.sh install                     installs docker-registry and htpasswd if missing
#   scripts/registry.sh start DIR USER PASS [PORT]  starts one in DIR (a free port unless given);
#                                                   prints its address, 127.0.0.1:PORT
#   scripts/registry.sh start-tls DIR USER PASS HOST
#                                                   starts one serving TLS only on HOST (an address of
#                                                   this machine), its certificate signed by a test CA
#                                                   made in DIR (DIR/ca.crt); prints HOST:PORT. The
#                                                   engine trusts it once `trust DIR` installs the CA.
#   scripts/registry.sh trust DIR | untrust DIR     installs (removes) DIR's CA for its address in
#                                                   /etc/docker/certs.d, where the engine looks per pull
#   scripts/registry.sh stop DIR                    stops it (its images stay in DIR)
#   scripts/registry.sh push DIR IMAGE NAME         pushes local IMAGE as ADDRESS/NAME (logged in as USER)
#   scripts/registry.sh digest DIR NAME:TAG         prints the manifest digest the registry serves
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
    start | start-tls)
        dir="${2:?usage: registry.sh start DIR USER PASS [PORT]}"
        user="${3:?usage: registry.sh start DIR USER PASS [PORT]}"
        pass="${4:?usage: registry.sh start DIR USER PASS [PORT]}"
        install
        mkdir -p "$dir/data"
        htpasswd -Bbn "$user" "$pass" > "$dir/htpasswd"
        host=127.0.0.1
        scheme=http
        tls=""
        if [ "$1" = start-tls ]; then
            host="${5:?usage: registry.sh start-tls DIR USER PASS HOST}"
            port="$(free_port)"
            scheme=https
            # A test CA and a certificate for HOST signed by it.
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=shepherd test CA" \
                -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
            openssl req -newkey rsa:2048 -nodes -subj "/CN=$host" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
            printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$host" > "$dir/ext.cnf"
            openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
                -extfile "$dir/ext.cnf" -out "$dir/server.crt" 2>/dev/null
            tls="  tls:
    certificate: $dir/server.crt
    key: $dir/server.key"
        else
            port="${5:-$(free_port)}"
        fi
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
  addr: $host:$port
$tls
auth:
  htpasswd:
    realm: shepherd-test
    path: $dir/htpasswd
YAML
        printf '%s\n%s\n' "$user" "$pass" > "$dir/login"
        docker-registry serve "$dir/config.yml" >> "$dir/registry.log" 2>&1 &
        echo $! > "$dir/pid"
        ca=()
        if [ "$scheme" = https ]; then ca=(--cacert "$dir/ca.crt"); fi
        for _ in $(seq 1 100); do
            code="$(curl -s "${ca[@]}" -o /dev/null -w '%{http_code}' "$scheme://$host:$port/v2/" || true)"
            if [ "$code" = 401 ]; then
                echo "$scheme" > "$dir/scheme"
                echo "$host:$port" > "$dir/address"
                echo "$host:$port"
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
    trust | untrust)
        dir="${2:?usage: registry.sh trust DIR}"
        certs="/etc/docker/certs.d/$(cat "$dir/address")"
        if [ "$1" = trust ]; then
            mkdir -p "$certs"
            cp "$dir/ca.crt" "$certs/ca.crt"
        else
            rm -rf "$certs"
        fi
        ;;
    digest)
        dir="${2:?usage: registry.sh digest DIR NAME:TAG}"
        reference="${3:?usage: registry.sh digest DIR NAME:TAG}"
        address="$(cat "$dir/address")"
        scheme="$(cat "$dir/scheme" 2>/dev/null || echo http)"
        { read -r user; read -r pass; } < "$dir/login"
        name="${reference%:*}"
        tag="${reference##*:}"
        ca=()
        if [ "$scheme" = https ]; then ca=(--cacert "$dir/ca.crt"); fi
        curl -fsS "${ca[@]}" -u "$user:$pass" -I \
            -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
            -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
            "$scheme://$address/v2/$name/manifests/$tag" |
            tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" { print $2 }'
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
        echo "usage: registry.sh install | start DIR USER PASS [PORT] | start-tls DIR USER PASS HOST | trust DIR | untrust DIR | stop DIR | push DIR IMAGE NAME | digest DIR NAME:TAG" >&2
        exit 2
        ;;
esac
