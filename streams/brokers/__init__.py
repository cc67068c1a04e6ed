"""The brokers qlane starts itself: embedded Tansu and a local Apache Kafka."""
