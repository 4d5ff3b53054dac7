"""A local 3-node Docker Swarm (Docker-in-Docker nodes and a registry) for the multi-node checks of issue 21."""
