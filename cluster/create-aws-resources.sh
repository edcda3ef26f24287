#!/usr/bin/env bash
# Creates, once per account and region, what cluster.yaml names but Ray does not create, and prints the values to
# set in cluster.yaml. Runs with your AWS credentials (your profile or environment; none is written anywhere).
#
#   VPC_ID=vpc-... SUBNET_ID=subnet-... [SSH_CIDR=10.8.0.0/16] [REGION=us-west-2] cluster/create-aws-resources.sh
#
# VPC_ID, SUBNET_ID  the private subnet every node goes in: in cluster.yaml's availability zone, with a route to a
#                    NAT gateway (pip, apt, the Hugging Face Hub, SSM), and room for 32 addresses per p5 node.
#                    The VPC needs DNS resolution and DNS hostnames on (the EFS mount target's name).
# SSH_CIDR           optional: admit SSH (TCP 22) from this range only, e.g. a VPN's. The default path (SSM Session
#                    Manager, cluster.yaml's auth) needs no inbound rule. 0.0.0.0/0 is refused.
#
# It creates:
#   security group pnr-cluster   all traffic from and to its own members only (Ray, NCCL over EFA, which needs both
#                                directions to the group itself, NFS to the EFS mount target), SSH from SSH_CIDR if
#                                set; outbound to anywhere stays (the AWS default) for the NAT gateway.
#   placement group pnr-p5       strategy cluster, for the p5 nodes.
#   IAM role + instance profile pnr-ray-head, for the head: cluster/iam-policy.json (what Ray 2.60's AWS node provider
#                                calls on the head: DescribeInstances, RunInstances and TerminateInstances of instances
#                                tagged ray-cluster-name=predict-and-reconstruct, CreateTags, and ssm:GetParameters on
#                                AWS's public parameters for the resolve:ssm ImageIds) plus the AWS managed policy
#                                AmazonSSMManagedInstanceCore (the SSM agent, for `ray up` through Session Manager).
#                                No iam:PassRole: the workers get no instance profile.
#   EFS file system              encrypted, elastic throughput, one mount target in SUBNET_ID in pnr-cluster.
# Run it once: it stops (set -e) at the first resource that already exists.
set -euo pipefail

: "${VPC_ID:?set VPC_ID: the VPC of the private subnet}"
: "${SUBNET_ID:?set SUBNET_ID: the private subnet (NAT gateway, cluster.yaml availability zone)}"
REGION=${REGION:-us-west-2}
SSH_CIDR=${SSH_CIDR:-}
CLUSTER=predict-and-reconstruct  # cluster.yaml's cluster_name; cluster/iam-policy.json matches this tag value
SECURITY_GROUP=pnr-cluster
PLACEMENT_GROUP=pnr-p5
HEAD_ROLE=pnr-ray-head
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "$SSH_CIDR" = 0.0.0.0/0 ] || [ "$SSH_CIDR" = ::/0 ]; then
  echo "SSH_CIDR=$SSH_CIDR would open SSH to the internet: use your VPN's range, or leave it unset (SSM)" >&2
  exit 2
fi

ec2() { aws --region "$REGION" ec2 "$@"; }

sg=$(ec2 create-security-group --group-name "$SECURITY_GROUP" --vpc-id "$VPC_ID" \
  --description "Ray cluster $CLUSTER: members only" \
  --tag-specifications "ResourceType=security-group,Tags=[{Key=ray-cluster-name,Value=$CLUSTER}]" \
  --query GroupId --output text)
ec2 authorize-security-group-ingress --group-id "$sg" --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$sg}]"
ec2 authorize-security-group-egress --group-id "$sg" --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$sg}]"
if [ -n "$SSH_CIDR" ]; then
  ec2 authorize-security-group-ingress --group-id "$sg" \
    --ip-permissions "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=$SSH_CIDR,Description=ssh}]"
fi

ec2 create-placement-group --group-name "$PLACEMENT_GROUP" --strategy cluster

aws iam create-role --role-name "$HEAD_ROLE" --assume-role-policy-document "file://$HERE/iam-trust-policy.json"
aws iam put-role-policy --role-name "$HEAD_ROLE" --policy-name ray-autoscaler \
  --policy-document "file://$HERE/iam-policy.json"
aws iam attach-role-policy --role-name "$HEAD_ROLE" \
  --policy-arn arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore
aws iam create-instance-profile --instance-profile-name "$HEAD_ROLE"
aws iam add-role-to-instance-profile --instance-profile-name "$HEAD_ROLE" --role-name "$HEAD_ROLE"

fs=$(aws --region "$REGION" efs create-file-system --creation-token "$CLUSTER" --encrypted \
  --performance-mode generalPurpose --throughput-mode elastic --tags "Key=Name,Value=$CLUSTER" \
  --query FileSystemId --output text)
until [ "$(aws --region "$REGION" efs describe-file-systems --file-system-id "$fs" \
  --query 'FileSystems[0].LifeCycleState' --output text)" = available ]; do sleep 5; done
aws --region "$REGION" efs create-mount-target --file-system-id "$fs" --subnet-id "$SUBNET_ID" --security-groups "$sg"

cat <<EOF

Set in cluster.yaml (each placeholder appears once):
  sg-REPLACE-ME      -> $sg
  subnet-REPLACE-ME  -> $SUBNET_ID
  fs-REPLACE-ME      -> $fs   (PNR_EFS_DNS=$fs.efs.$REGION.amazonaws.com)
The AMIs that cluster.yaml's resolve:ssm ImageIds name today (replace them by these ids to pin them):
EOF
aws --region "$REGION" ssm get-parameters --query 'Parameters[].[Name,Value]' --output text --names \
  /aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id \
  /aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id
