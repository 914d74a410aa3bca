package service

// ReferenceService is the reference deployment's service.yml (JSON despite
// its name), verbatim: my-nginx-service, TCP 8080 to the containers' port
// 80. The demo creates it and the tests read it, so all say the same.
const ReferenceService = `{
    "kind": "Service",
    "apiVersion": "v1",
    "metadata": {
        "name": "my-nginx-service"
    },
    "spec": {
        "selector": {
            "app": "my-nginx"
        },
        "ports": [
            {
                "protocol": "TCP",
                "port": 8080,
                "targetPort": 80
            }
        ]
    }
}`
