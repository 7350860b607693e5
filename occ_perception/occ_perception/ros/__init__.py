"""rclpy glue: the only subpackage that imports rclpy."""
