from chaos.stubs.weaviate.server import main

main()
