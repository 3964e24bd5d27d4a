"""Development infrastructure: the embedded broker (Apache Kafka or Tansu), redis-server and Redis Cluster."""
