#!/usr/bin/env bash
# setup-roles.sh: etcd roles and users for weft, with least privilege.
#
# Roles (NAME is --roles, default "weft"; PREFIX is --prefix):
#   NAME-node           read PREFIX/config and PREFIX/services/*; read and
#                       write PREFIX/subnets/* (what weftd needs to take, renew
#                       and repair its lease, and to program the services)
#   NAME-node-readonly  read PREFIX/config, PREFIX/subnets/* and PREFIX/services/*
#                       (weftd on a node whose reservation already carries its
#                       exact value: it needs no write at all)
#   NAME-operator       read and write PREFIX/config, PREFIX/subnets/* and
#                       PREFIX/services/* (weftctl config set, reservations,
#                       weftctl service, endpoints and apply)
#
# Users are created when missing, with the password read from a file (never
# from the command line), and granted their role. An existing user keeps its
# password: change it with `etcdctl user passwd`. Running the script again
# changes nothing; a permission it grants replaces the same key's permission
# of an earlier run. It does not revoke permissions it did not grant.
#
# etcdctl reaches etcd as its ETCDCTL_* environment says (ETCDCTL_ENDPOINTS,
# ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY). Once auth is on, the script
# needs root: give --root-password-file (or set ETCDCTL_USER and
# ETCDCTL_PASSWORD yourself). --enable-auth also creates root if missing and
# turns auth on, last, after the roles and users exist.
#
# Example, on a fresh etcd:
#   ETCDCTL_ENDPOINTS=https://172.17.42.30:2379 ETCDCTL_CACERT=/etc/weft/etcd-ca.pem \
#   deploy/etcd/setup-roles.sh --enable-auth --root-password-file /root/etcd-root.pw \
#     --node-password-file /root/weft-node.pw --operator-password-file /root/weft-operator.pw
set -euo pipefail

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	cat <<'USAGE'
Flags:
  --prefix PREFIX                  etcd prefix of the network (default /coreos.com/network)
  --roles NAME                     role name stem (default weft)
  --node-user USER                 node user (default weft-node; "" skips it)
  --node-password-file FILE        its password, needed if USER does not exist yet
  --readonly-user USER             read-only node user (default: none)
  --readonly-password-file FILE
  --operator-user USER             operator user (default weft-operator; "" skips it)
  --operator-password-file FILE
  --root-password-file FILE        log in as root with this password
  --enable-auth                    create root if missing (needs --root-password-file) and turn auth on
USAGE
}

die() {
	echo "setup-roles.sh: $*" >&2
	exit 2
}

prefix=/coreos.com/network
roles=weft
node_user=weft-node node_pw=
readonly_user= readonly_pw=
operator_user=weft-operator operator_pw=
root_pw=
enable_auth=false

while [ $# -gt 0 ]; do
	flag=$1 val=
	case "$flag" in
	-h | --help)
		usage
		exit 0
		;;
	--enable-auth)
		enable_auth=true
		shift
		continue
		;;
	--*=*)
		val=${flag#*=} flag=${flag%%=*}
		shift
		;;
	--*)
		[ $# -ge 2 ] || die "$flag: needs a value"
		val=$2
		shift 2
		;;
	*) die "unexpected argument '$flag' (see --help)" ;;
	esac
	case "$flag" in
	--prefix) prefix=$val ;;
	--roles) roles=$val ;;
	--node-user) node_user=$val ;;
	--node-password-file) node_pw=$val ;;
	--readonly-user) readonly_user=$val ;;
	--readonly-password-file) readonly_pw=$val ;;
	--operator-user) operator_user=$val ;;
	--operator-password-file) operator_pw=$val ;;
	--root-password-file) root_pw=$val ;;
	*) die "unknown flag $flag (see --help)" ;;
	esac
done

prefix=${prefix%/}
case "$prefix" in
/*) ;;
*) die "--prefix '$prefix': must start with /" ;;
esac
[[ "$prefix" =~ ^/[[:graph:]]*$ ]] || die "--prefix '$prefix': no spaces or control characters"
[[ "$roles" =~ ^[A-Za-z0-9._-]+$ ]] || die "--roles '$roles': letters, digits, '.', '_' and '-' only"
for f in "$node_pw" "$readonly_pw" "$operator_pw" "$root_pw"; do
	[ -z "$f" ] || [ -r "$f" ] || die "password file $f: not readable"
done
command -v etcdctl >/dev/null || die "etcdctl not found (Debian: apt-get install etcd-client)"

export ETCDCTL_API=3
# etcdctl's 5 s default gives up on a busy etcd, where each request with auth
# on also pays for a bcrypt login; the script has no deadline of its own.
export ETCDCTL_DIAL_TIMEOUT=${ETCDCTL_DIAL_TIMEOUT:-10s}
export ETCDCTL_COMMAND_TIMEOUT=${ETCDCTL_COMMAND_TIMEOUT:-30s}
# Log in only where auth is on: etcd refuses a login while it is off.
if [ -n "$root_pw" ] && ! env -u ETCDCTL_USER -u ETCDCTL_PASSWORD etcdctl user list >/dev/null 2>&1; then
	# Through the environment, not the command line, which others can read.
	ETCDCTL_USER=root ETCDCTL_PASSWORD=$(head -n1 "$root_pw")
	export ETCDCTL_USER ETCDCTL_PASSWORD
fi

ctl() { etcdctl "$@"; }

if ! out=$(ctl user list 2>&1); then
	die "etcd at ${ETCDCTL_ENDPOINTS:-127.0.0.1:2379} refused to list users (${out##*Error: }): with auth on, give --root-password-file"
fi

# missing NOUN NAME: whether etcd says it has no such role or user. Any
# other failure (etcd unreachable, too slow, access denied) stops the script.
missing() {
	local out
	if out=$(ctl "$1" get "$2" 2>&1); then
		return 1
	fi
	case "$out" in
	*"$1 name not found"* | *"$1 not found"*) return 0 ;;
	esac
	die "etcdctl $1 get $2: ${out##*Error: }"
}

ensure_role() {
	if missing role "$1"; then
		ctl role add "$1" >/dev/null
	fi
	echo "role $1"
}

# ensure_user USER PASSWORD_FILE ROLE FLAG
ensure_user() {
	local user=$1 pwfile=$2 role=$3 flag=$4
	[ -n "$user" ] || return 0
	if missing user "$user"; then
		[ -n "$pwfile" ] || die "user $user does not exist: give $flag to create it"
		# etcdctl reads one word from stdin with --interactive=false.
		head -n1 "$pwfile" | ctl user add "$user" --interactive=false >/dev/null
		echo "user $user created"
	fi
	ctl user grant-role "$user" "$role" >/dev/null
	echo "user $user has role $role"
}

config=$prefix/config
subnets=$prefix/subnets/
services=$prefix/services/

ensure_role "$roles-node"
ctl role grant-permission "$roles-node" read "$config" >/dev/null
ctl role grant-permission "$roles-node" --prefix=true readwrite "$subnets" >/dev/null
ctl role grant-permission "$roles-node" --prefix=true read "$services" >/dev/null

ensure_role "$roles-node-readonly"
ctl role grant-permission "$roles-node-readonly" read "$config" >/dev/null
ctl role grant-permission "$roles-node-readonly" --prefix=true read "$subnets" >/dev/null
ctl role grant-permission "$roles-node-readonly" --prefix=true read "$services" >/dev/null

ensure_role "$roles-operator"
ctl role grant-permission "$roles-operator" readwrite "$config" >/dev/null
ctl role grant-permission "$roles-operator" --prefix=true readwrite "$subnets" >/dev/null
ctl role grant-permission "$roles-operator" --prefix=true readwrite "$services" >/dev/null

ensure_user "$node_user" "$node_pw" "$roles-node" --node-password-file
ensure_user "$readonly_user" "$readonly_pw" "$roles-node-readonly" --readonly-password-file
ensure_user "$operator_user" "$operator_pw" "$roles-operator" --operator-password-file

if $enable_auth; then
	[ -n "$root_pw" ] || die "--enable-auth needs --root-password-file"
	if missing user root; then
		head -n1 "$root_pw" | ctl user add root --interactive=false >/dev/null
		echo "user root created"
	fi
	ctl user grant-role root root >/dev/null
	ctl auth enable >/dev/null
	echo "auth enabled"
fi
