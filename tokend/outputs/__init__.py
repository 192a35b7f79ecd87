"""Every way a token leaves tokend, one module (or folder) each. For programs written for tokend, or that
read a file:

    sinks.py     file sinks, written from the manager's login announcements (sinkfiles.py: the writes,
                 which never follow a link)
    proxy/       the auth-injecting proxy: the program holds no token at all
    execute.py   `tokend exec`: a child process started with the token in its environment

For programs that were not written for it, each in the protocol the program already speaks:

    git.py       `tokend git-credential`: git's credential helper protocol
    docker.py    `docker-credential-tokend`: Docker's credential helper protocol
    kube.py      `tokend kube-credential`: kubectl's exec plugin (an ExecCredential)
    asking.py    what those three helpers ask the daemon (client side, like `tokend get`)
    json_answer.py  the JSON answer of the Azure and AWS endpoints
    gce.py       [metadata.gce]: Google's metadata server, for google-auth and every Google client library
    azure.py     [metadata.azure]: Azure's managed identity endpoint (App Service), for azure-identity
    aws.py       [metadata.aws]: the container credentials endpoint, for every AWS SDK
    credential_process.py  `tokend aws-credential`: the AWS CLI's and SDKs' credential_process
    metadata.py  the metadata listeners: their sockets, request checks and routing
    environment.py  what `tokend exec` puts in a child's environment for the metadata listeners
    templated.py the file sinks' `format = "template"` (an nginx include, a .netrc)
    config.py    the sinks' and the metadata endpoints' settings models (a leaf: the config imports it)

The credential helpers run as client commands: standard library only, so that git
and Docker, which start one for every request, wait for little more than Python itself. Nothing is
imported here, for the same reason.
"""
