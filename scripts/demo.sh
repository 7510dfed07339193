#!/usr/bin/env bash
# `make demo`: a two-node VXLAN lab, cross-node pod traffic through sluice's programs, a
# ClusterIP service, the counters that prove it, then teardown. Nothing is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${SLUICE_BIN_DIR:-target/debug}
sluice="$bin/sluice"
lab=demo-$$
file=${1:-examples/two-node-vxlan.yaml}

cleanup() { "$sluice" lab down "$lab" >/dev/null 2>&1 || true; }
trap cleanup EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
in_pod() { local pod=$1; shift; "$sluice" lab exec --lab "$lab" "$pod" -- "$@"; }
# HTTP GET with bash's /dev/tcp (no curl needed); prints the body (the answering pod's name).
http() { in_pod "$1" bash -c "exec 3<>/dev/tcp/$2/80 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && tail -n 1 <&3"; }

step "Bringing up lab $lab from $file"
"$sluice" lab up "$file" --name "$lab"

step "Cross-node pod traffic: x/a (node-a) -> pods on node-b"
for target in x/c y/d; do
  ip=$("$sluice" lab status "$lab" -o json | python3 -c "import json,sys; print(next(p['ip'] for p in json.load(sys.stdin)['pods'] if p['namespace']+'/'+p['name']=='$target'))")
  printf '  x/a -> %-4s %-10s HTTP answered by: %s\n' "$target" "$ip" "$(http x/a "$ip")"
done

step "A ClusterIP service (x/web, 10.96.0.10) with one backend on each node"
"$sluice" service list --lab "$lab" --node node-a
for i in 1 2 3 4 5 6; do printf '  y/b -> 10.96.0.10:80 answered by: %s\n' "$(http y/b 10.96.0.10)"; done

step "NodePort x/web-nodeport from a host outside the cluster, through each node"
for node_ip in 192.168.50.1 192.168.50.2; do
  for i in 1 2 3; do
    printf '  outside -> %s:30080 answered by: %s\n' "$node_ip" \
      "$("$sluice" lab exec --lab "$lab" --outside -- bash -c "exec 3<>/dev/tcp/$node_ip/30080 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && tail -n 1 <&3")"
  done
done

step "NetworkPolicy: x/a admits only its own namespace (x/c may, y/d may not)"
xa=$("$sluice" lab status "$lab" -o json | python3 -c "import json,sys; print(next(p['ip'] for p in json.load(sys.stdin)['pods'] if p['namespace']+'/'+p['name']=='x/a'))")
"$sluice" lab apply --lab "$lab" only-x -f - <<'EOF'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: only-x, namespace: x }
spec:
  podSelector: { matchLabels: { app: a } }
  ingress: [{ from: [{ podSelector: {} }] }]
EOF
sleep 1
"$sluice" policy get --lab "$lab"
"$sluice" endpoint get x/a --lab "$lab"
"$sluice" policy trace --lab "$lab" --from y/d --to x/a --port 80/tcp || true
printf '  x/c -> x/a: %s\n' "$(http x/c "$xa")"
printf '  y/d -> x/a: %s\n' "$(timeout 3 "$sluice" lab exec --lab "$lab" y/d -- bash -c "exec 3<>/dev/tcp/$xa/80 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && tail -n 1 <&3" 2>/dev/null || echo 'no answer (dropped: policy denied)')"
step "Flows (like hubble observe): the denied connection, the allowed one, and the policy verdicts"
"$sluice" observe --lab "$lab" --to-pod x/a --last 8
"$sluice" observe --lab "$lab" -t policy-verdict --last 4 -o table
"$sluice" lab delete --lab "$lab" only-x

step "BPF links on this machine (the lab's two nodes): TCX on pod veths and VXLAN devices ('type 11' in Debian's bpftool 7.1), cgroup socket-LB"
bpftool link show | grep -E "^[0-9]+:" | sed 's/^/  /'

step "node-a's agent: endpoints and datapath counters (packets really went through the programs)"
"$sluice" endpoint list --lab "$lab" --node node-a
"$sluice" status --lab "$lab" --node node-a

step "Tearing down"
"$sluice" lab down "$lab"
trap - EXIT
echo "done: nothing left behind ($(ip netns list | grep -c "sluice.$lab" || true) namespaces of $lab remain)"
