// Package inventory reads the list of nodes that `kubecpr cluster` recovers:
// every control-plane node (each running a stacked etcd member) and every
// worker, with how to reach each one.
//
// Load reads two formats and tells them apart by their content.
//
// # kubecpr's own format
//
//	apiVersion: kubecpr.io/v1alpha1
//	kind: Inventory
//	nodes:
//	  - name: cp1                 # the Kubernetes node name (DNS-1123 subdomain)
//	    role: control-plane       # control-plane | worker
//	    address: 127.0.0.1        # IP (or host name) the node has in the cluster
//	    ssh:
//	      user: admin             # default root
//	      host: 127.0.0.1         # default: address, else name
//	      port: 22                # default 22
//	      identityFile: ~/.ssh/id_ed25519
//	      agent: true             # use the keys of $SSH_AUTH_SOCK (identityFile, agent or both)
//	      knownHosts: ~/.ssh/known_hosts
//	      sudo: true              # default: true unless user is root
//	  - name: w1
//	    role: worker
//	    address: 127.0.0.4
//	    root: nodes/w1            # a local copy of the node's filesystem tree
//
// Each node has either ssh (a live node) or root (a directory holding the
// node's tree: rehearsals on copies, and tests). Relative paths (root,
// identityFile, knownHosts) are resolved from the inventory file's directory
// and "~/" from the home directory. Unknown fields are errors, so a typo never
// goes unnoticed.
//
// # Ansible / kubespray YAML inventories
//
//	all:
//	  hosts:
//	    node1: {ansible_host: 127.0.0.1, ip: 127.0.0.1, ansible_user: admin}
//	    node4: {ansible_host: 127.0.0.4, ip: 127.0.0.4}
//	  children:
//	    kube_control_plane: {hosts: {node1: }}
//	    kube_node: {hosts: {node4: }}
//	    etcd: {hosts: {node1: }}
//	    k8s_cluster: {children: {kube_control_plane: , kube_node: }}
//
// Group membership follows children of children, and vars are merged as
// Ansible does (the all group, then deeper groups, then the host). A host in
// kube_control_plane (formerly kube-master) is a control-plane node; a host
// only in kube_node (formerly kube-node) is a worker; other hosts (bastion,
// calico_rr) are not nodes. An etcd host that is not a control-plane node is
// refused: kubecpr supports stacked etcd only. The node's Address is ip, else
// access_ip, else ansible_host; SSH goes to ansible_host (else the host name)
// on ansible_port (default 22) as ansible_user (default root), with
// ansible_ssh_private_key_file (relative to the working directory, as ssh
// run by Ansible takes it), or the SSH agent when none is given, and sudo
// when the user is not root or ansible_become is true.
//
// Variables kept in group_vars/ and host_vars/ directories and Jinja
// templates are not evaluated, and INI inventories are refused: run
// `ansible-inventory -i FILE --list -y > hosts.yaml`, which folds them all
// into one YAML file that Load reads.
//
// Load validates what it read (see Inventory.Validate); CrossCheck then holds
// the inventory against what the first node knows offline (etcd's
// --initial-cluster, the node names in certificates), so that a wrong
// inventory is refused before anything changes.
package inventory
