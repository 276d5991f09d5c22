#!/usr/bin/env python3
"""UNTESTED EXAMPLE: a Shepherd `exec` provisioner for AWS EC2, through the AWS CLI.

No cloud is reachable from the machines Shepherd is developed and tested on,
so this program has never run against AWS. It shows how a real driver maps
the protocol of docs/provisioning.md onto a cloud CLI; read it, test it in
your own account, and adapt it before relying on it.

Each machine is an EC2 instance tagged shepherd:cluster, shepherd:machine
and shepherd:pool, booted with a cloud-init script that installs the
shepherd binary and runs `shepherd agent` under systemd with the machine's
own join token.

The join token travels in the instance's user-data, which the instance
metadata service (IMDS) serves to anything on the host that asks. So the
instances require IMDSv2 (session tokens) with a hop limit of 1: a task's
container is one network hop further than the host, so its requests to
169.254.169.254 never get a token and read nothing (user-data, the
instance role's credentials). The cloud-init script also removes the token
from the user-data's copy on disk once the agent has it in its own file.
Keep it that way: with IMDSv1 or a hop limit of 2, any task could read the
join token and register nodes of its own.

Environment (all required unless noted):
  SHEPHERD_EC2_AMI            an AMI with Docker Engine installed
  SHEPHERD_EC2_SUBNET         the subnet the instances go in
  SHEPHERD_EC2_SECURITY_GROUP a security group letting agents reach the servers
  SHEPHERD_EC2_BINARY_URL     where instances download the shepherd binary
  SHEPHERD_EC2_INSTANCE_TYPES optional map "cpu_millicores:memory_mib=type,..."
                              (default: the smallest of a built-in table that fits the shape)
  AWS_REGION / AWS_PROFILE    as the AWS CLI reads them
"""

import json
import os
import shlex
import subprocess
import sys

# (vCPU millicores, MiB, type), smallest first.
TYPES = [
    (2000, 4096, "t3.medium"),
    (2000, 8192, "t3.large"),
    (4000, 16384, "t3.xlarge"),
    (8000, 32768, "t3.2xlarge"),
    (16000, 65536, "m6i.4xlarge"),
]


def aws(*args):
    done = subprocess.run(["aws", *args, "--output", "json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"aws {args[0]} {args[1]} failed")
    return json.loads(done.stdout or "{}")


def instance_type(shape):
    for cpu, mem, name in TYPES:
        if cpu >= shape["cpu_millicores"] and mem >= shape["memory_mib"]:
            return name
    raise RuntimeError(f"no instance type fits {shape['cpu_millicores']}m / {shape['memory_mib']} MiB")


def user_data(request):
    args = " ".join(shlex.quote(a) for a in request["agent_args"])
    return f"""#!/bin/sh
set -e
curl -fsSL {shlex.quote(os.environ['SHEPHERD_EC2_BINARY_URL'])} -o /usr/local/bin/shepherd
chmod +x /usr/local/bin/shepherd
install -d -m 0700 /var/lib/shepherd
printf 'SHEPHERD_JOIN_TOKEN=%s\\n' {shlex.quote(request['join']['token'])} > /etc/shepherd-agent.env
chmod 600 /etc/shepherd-agent.env
cat > /etc/systemd/system/shepherd-agent.service <<'UNIT'
[Unit]
After=docker.service
[Service]
EnvironmentFile=/etc/shepherd-agent.env
ExecStart=/usr/local/bin/shepherd {args} --data-dir /var/lib/shepherd --driver docker
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now shepherd-agent
# The token is in /etc/shepherd-agent.env (0600) now: not in cloud-init's copy.
rm -f /var/lib/cloud/instance/user-data.txt /var/lib/cloud/instance/scripts/part-001
"""


def tags(request):
    machine = request["machine"]
    pairs = {"shepherd:cluster": request["cluster"], "shepherd:machine": machine["id"], "shepherd:pool": machine["pool"]}
    return ",".join(f"{{Key={k},Value={v}}}" for k, v in pairs.items())


def find(cluster, machine_id=None):
    filters = [f"Name=tag:shepherd:cluster,Values={cluster}", "Name=instance-state-name,Values=pending,running,stopping,stopped"]
    if machine_id:
        filters.append(f"Name=tag:shepherd:machine,Values={machine_id}")
    found = aws("ec2", "describe-instances", "--filters", *filters)
    for reservation in found.get("Reservations", []):
        for instance in reservation.get("Instances", []):
            tag = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            yield {"machine_id": tag.get("shepherd:machine"), "provider_id": instance["InstanceId"], "pool": tag.get("shepherd:pool")}


def create(request):
    existing = list(find(request["cluster"], request["machine"]["id"]))
    if existing:
        return {"provider_id": existing[0]["provider_id"]}
    made = aws(
        "ec2", "run-instances",
        "--image-id", os.environ["SHEPHERD_EC2_AMI"],
        "--instance-type", instance_type(request["machine"]["shape"]),
        "--subnet-id", os.environ["SHEPHERD_EC2_SUBNET"],
        "--security-group-ids", os.environ["SHEPHERD_EC2_SECURITY_GROUP"],
        "--count", "1",
        "--user-data", user_data(request),
        # IMDSv2 only, one hop: the host reads its metadata, a container never.
        "--metadata-options", "HttpTokens=required,HttpPutResponseHopLimit=1,HttpEndpoint=enabled",
        "--tag-specifications", f"ResourceType=instance,Tags=[{tags(request)}]",
        "--client-token", request["machine"]["id"],  # EC2's own idempotency key
    )
    return {"provider_id": made["Instances"][0]["InstanceId"]}


def destroy(request):
    target = request.get("provider_id") or next(
        (m["provider_id"] for m in find(request["cluster"], request["machine_id"])), None
    )
    if target:
        aws("ec2", "terminate-instances", "--instance-ids", target)
    return {}


def main():
    request = json.load(sys.stdin)
    try:
        if request["op"] == "create":
            answer = create(request)
        elif request["op"] == "destroy":
            answer = destroy(request)
        elif request["op"] == "list":
            answer = {"machines": [m for m in find(request["cluster"]) if m["machine_id"]]}
        else:
            raise RuntimeError(f"unknown op {request['op']!r}")
    except (RuntimeError, KeyError) as e:
        print(json.dumps({"error": str(e)}))
        return 1
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
