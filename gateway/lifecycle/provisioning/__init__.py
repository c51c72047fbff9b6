"""How a tenant's cluster is made: the `local` provisioner (kube-apiserver processes) and the
`helm` provisioner (a vcluster release on the host cluster), with what each needs."""
