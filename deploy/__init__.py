"""Getting onto ModelArts: the ECS build-and-push script (build_and_push.sh) and make rehearse (rehearse/)."""
