from kafka_mirrors.cli import main

main()
