"""Ways a token leaves tokend for programs that were not written for it, each in the protocol the program
already speaks: one module per protocol.

    git.py       `tokend git-credential`: git's credential helper protocol
    docker.py    `docker-credential-tokend`: Docker's credential helper protocol
    kube.py      `tokend kube-credential`: kubectl's exec plugin (an ExecCredential)
    asking.py    what those three helpers ask the daemon (client side, like `tokend get`)
    gce.py       [metadata.gce]: Google's metadata server, for google-auth and every Google client library
    azure.py     [metadata.azure]: Azure's managed identity endpoint (App Service), for azure-identity
    metadata.py  the metadata listeners: their settings, sockets, request checks and routing
    environment.py  what `tokend exec` puts in a child's environment for the metadata listeners
    templated.py the file sinks' `format = "template"` (an nginx include, a .netrc)

The other ways out are the file sinks (tokend.sinks), the auth-injecting proxy (tokend.proxy) and
`tokend exec` (tokend.execute). The helpers run as client commands: standard library only, so that git
and Docker, which start one for every request, wait for little more than Python itself. Nothing is
imported here, for the same reason.
"""
